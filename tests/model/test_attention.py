"""Decode attention that depends on the row alone: against a plain reference, and bit for bit the
same for a row whatever the other rows of the call hold, their lengths, or the row's place.

Both implementations run here: the CPU's fold in torch, and the CUDA path's Triton kernels under
Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py where there is no GPU); the
kernels are also compiled for two GPU architectures, which needs no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import pytest
import torch
import torch.nn.functional as F

from musicgen_cog.model import attention
from musicgen_cog.model.attention import CHUNK, folded_attention, masked_sdpa, rowwise_attention
from tests.conftest import ROOT

HEADS, DIM, CACHE = 2, 16, 3 * CHUNK + 40  # a cache whose last chunk is partly outside it
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fold(query, keys, values, lengths):
    return folded_attention(query, keys, values, lengths, span=keys.shape[2])


def kernels(query, keys, values, lengths):
    """The CUDA path: on a GPU where there is one, else in Triton's interpreter on the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moved = (t.to(device) for t in (query, keys, values, lengths))
    return attention._triton_attention(*moved).cpu()


IMPLEMENTATIONS = {"cpu-fold": fold, "triton-kernels": kernels}


def reference(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row alone through SDPA over exactly its filled keys and values."""
    rows = [
        F.scaled_dot_product_attention(query[b : b + 1], keys[b : b + 1, :, :n], values[b : b + 1, :, :n])
        for b, n in enumerate(lengths.tolist())
    ]
    return torch.cat(rows)


def cache(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, HEADS, CACHE, DIM)
    query = torch.randn((rows, HEADS, 1, DIM), generator=generator)
    return query, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request) -> Attention:
    return IMPLEMENTATIONS[request.param]


LENGTHS = [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7, CACHE - 1, CACHE]


def test_each_row_attends_to_exactly_its_own_filled_positions(implementation):
    query, keys, values = cache(len(LENGTHS), seed=1)
    lengths = torch.tensor(LENGTHS)
    got = implementation(query, keys, values, lengths)
    assert got.shape == query.shape and got.dtype == query.dtype
    torch.testing.assert_close(got, reference(query, keys, values, lengths), rtol=1e-5, atol=1e-5)


def test_every_length_from_one_to_the_whole_cache_matches_the_reference():
    """The fold at each length 1 .. CACHE (the kernels' grid is the same for every length: the
    lengths above cover their chunk edges)."""
    query, keys, values = cache(1, seed=2)
    for length in range(1, CACHE + 1):
        lengths = torch.tensor([length])
        torch.testing.assert_close(fold(query, keys, values, lengths), reference(query, keys, values, lengths))


def test_a_rows_result_is_the_same_bits_whatever_the_other_rows_hold(implementation):
    """Other rows' keys, values, queries and lengths change, and the row moves to another place:
    its output does not change by one bit."""
    query, keys, values = cache(4, seed=3)
    lengths = torch.tensor([300, 5, CACHE, 40])
    alone = implementation(query, keys, values, lengths)[0]
    other_query, other_keys, other_values = cache(4, seed=4)
    for place in (0, 2, 3):
        q, k, v = other_query.clone(), other_keys.clone(), other_values.clone()
        q[place], k[place], v[place] = query[0], keys[0], values[0]
        company = torch.tensor([CACHE, 1, 2 * CHUNK, 9])
        company[place] = 300
        assert torch.equal(implementation(q, k, v, company)[place], alone)


def test_a_rows_result_ignores_what_lies_past_its_length(implementation):
    """Keys and values past a row's length (what a slot's earlier request left) are never read."""
    query, keys, values = cache(2, seed=5)
    lengths = torch.tensor([CHUNK + 3, 17])
    before = implementation(query, keys, values, lengths)
    keys[0, :, CHUNK + 3 :], values[1, :, 17:] = 1e4, -1e4
    assert torch.equal(implementation(query, keys, values, lengths), before)


def test_the_cpu_fold_gives_the_same_bits_however_far_the_furthest_row_reaches():
    """The fold goes as far as `span` (the furthest row's bucket): chunks past a row's length
    change nothing, so a row beside a longer one gets the bits it gets alone."""
    query, keys, values = cache(1, seed=6)
    lengths = torch.tensor([100])
    near = folded_attention(query, keys, values, lengths, span=CHUNK)
    assert torch.equal(folded_attention(query, keys, values, lengths, span=CACHE), near)


def test_half_precision_rows_come_back_in_half_precision_close_to_the_reference(implementation):
    query, keys, values = (t.half() for t in cache(2, seed=7))
    lengths = torch.tensor([CHUNK + 1, 3])
    got = implementation(query, keys, values, lengths)
    assert got.dtype == torch.float16
    expected = reference(query.float(), keys.float(), values.float(), lengths)
    torch.testing.assert_close(got.float(), expected, rtol=2e-3, atol=2e-3)


def test_rowwise_attention_takes_the_fold_on_a_cpu(monkeypatch):
    query, keys, values = cache(2, seed=8)
    lengths = torch.tensor([CHUNK + 1, 3])
    monkeypatch.setattr(attention, "_triton_attention", None)  # never called for CPU tensors
    assert torch.equal(rowwise_attention(query, keys, values, lengths, CACHE), fold(query, keys, values, lengths))


def test_rowwise_attention_gives_cuda_tensors_to_the_kernels(monkeypatch):
    """On a GPU the query, keys, values and lengths go to the Triton kernels as they are (the
    tensors here stand in for CUDA ones: only their `is_cuda` is read before the call)."""
    query, keys, values, lengths = tensors = [cast(torch.Tensor, SimpleNamespace(is_cuda=True)) for _ in range(4)]
    monkeypatch.setattr(attention, "_triton_attention", lambda *given: list(given))
    assert rowwise_attention(query, keys, values, lengths, CACHE) == tensors


def test_attention_runs_where_the_query_is_whatever_torchs_default_device(implementation):
    """On a GPU the query is on CUDA and torch's default device is still the CPU: every working
    tensor must be made on the query's device. Here the default is `meta` and the query a CPU's."""
    query, keys, values = cache(2, seed=9)
    lengths = torch.tensor([CHUNK + 1, 3])
    expected = implementation(query, keys, values, lengths)
    with torch.device("meta"):
        assert torch.equal(implementation(query, keys, values, lengths), expected)


def test_a_head_size_between_two_powers_of_two_is_attended_whole(implementation):
    """The kernels work on a power-of-two width of lanes (32 for 17 dimensions) and mask the rest."""
    generator = torch.Generator().manual_seed(10)
    query = torch.randn((2, HEADS, 1, 17), generator=generator)
    keys, values = (torch.randn((2, HEADS, CACHE, 17), generator=generator) for _ in range(2))
    lengths = torch.tensor([CHUNK + 5, 30])
    got = implementation(query, keys, values, lengths)
    torch.testing.assert_close(got, reference(query, keys, values, lengths), rtol=1e-5, atol=1e-5)


def test_sdpa_under_a_mask_attends_each_row_to_its_own_filled_positions():
    """MUSICGEN_ATTENTION=sdpa: every row over `length` positions, each masked past its own length:
    what lies past a row's length changes nothing; close to the reference (not row-invariant)."""
    query, keys, values = cache(3, seed=11)
    lengths = torch.tensor([CHUNK + 3, 17, 2 * CHUNK])
    got = masked_sdpa(query, keys, values, lengths, 2 * CHUNK)
    assert got.shape == query.shape and got.dtype == query.dtype
    torch.testing.assert_close(got, reference(query, keys, values, lengths), rtol=1e-5, atol=1e-5)
    keys[0, :, CHUNK + 3 :], values[1, :, 17:] = 1e4, -1e4
    assert torch.equal(masked_sdpa(query, keys, values, lengths, 2 * CHUNK), got)
    halves = masked_sdpa(query.half(), keys.half(), values.half(), lengths, 2 * CHUNK)
    assert halves.dtype == torch.float16
    torch.testing.assert_close(halves.float(), got, rtol=2e-3, atol=2e-3)


def test_sdpa_under_a_mask_runs_where_the_query_is_in_its_precision_whatever_the_caches():
    """Its mask is made on the query's device (torch's default here is `meta`, the query a CPU's), and
    a cache kept in another precision is read in the query's (a bf16 query over an fp32 cache)."""
    query, keys, values = cache(2, seed=12)
    lengths = torch.tensor([CHUNK + 1, 3])
    expected = masked_sdpa(query, keys, values, lengths, 2 * CHUNK)
    with torch.device("meta"):
        assert torch.equal(masked_sdpa(query, keys, values, lengths, 2 * CHUNK), expected)
    given = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recorded(query, keys, values, attn_mask):
        given.append((keys.dtype, values.dtype, attn_mask.dtype, attn_mask.device))
        return sdpa(query, keys, values, attn_mask=attn_mask)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
        halves = masked_sdpa(query.bfloat16(), keys, values, lengths, 2 * CHUNK)
    assert halves.dtype == torch.bfloat16
    torch.testing.assert_close(halves.float(), expected, rtol=2e-2, atol=2e-2)
    # a GPU's SDPA kernels reject a mask in another precision than the query's, or misread it
    assert given == [(torch.bfloat16, torch.bfloat16, torch.bfloat16, query.device)]


COMPILE_FOR_A_GPU = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from musicgen_cog.model import attention

built = attention.triton_kernels()
shape = {"CHUNKS": 9, "CHUNK": attention.CHUNK, "BLOCK": attention.BLOCK, "DIM": 64, "BLOCK_DIM": 64}
kinds = {
    built.partials: ["*fp16"] * 3 + ["*i64"] + ["*fp32"] * 3 + ["i32"] * 11 + ["i32", "i32", "fp32"],
    built.fold: ["*fp32"] * 3 + ["*i64", "*fp16"] + ["i32"] * 4,
}
for kernel, types in kinds.items():
    constants = {name: shape[name] for name in kernel.arg_names if name in shape}
    signature = dict(zip(kernel.arg_names, types + ["constexpr"] * len(constants), strict=True))
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", int(sys.argv[1]), 32))
    print(kernel.__name__, len(compiled.asm["cubin"]))
"""


@pytest.mark.parametrize("arch", [90, 75], ids=["hopper", "turing"])
def test_the_triton_kernels_compile_for_a_gpu_without_one(arch):
    """Triton compiles to GPU machine code (cubin) without a device: what the interpreter accepts
    and a GPU's compiler would refuse shows up here. In a process of its own: the interpreter,
    once it has run, leaves Triton's language patched for its own use."""
    pytest.importorskip("triton")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_A_GPU, str(arch)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    built = dict(line.split() for line in done.stdout.splitlines())
    assert set(built) == {"partials", "fold"} and all(int(size) > 0 for size in built.values())
