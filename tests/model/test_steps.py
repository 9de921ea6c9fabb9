"""The GPU's all-slots step, run on a CPU: it never reads the device from the host, and capture
leaves the state of the requests in flight as it found it.

Graphs are 'captured' as ReplayedStep (tests/model/conftest.py); models are pinned to the CPU.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from musicgen_cog.model import decoding_path, fast_decode, sampling, steps
from musicgen_cog.model.decoding_path import BATCHED, batched_start
from musicgen_cog.model.fast_decode import KV_BUCKET
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.steps import BatchedSteps
from musicgen_cog.model.warm_up import warm_up
from tests.helpers import decoding_steps
from tests.model.test_decoding_loop import after_idle, request, together, tokens


class HostTraffic(TorchDispatchMode):
    """Records the operators that move a value between Python and a tensor: `.item()`, `bool()`,
    `int()` of a tensor, `torch.equal` (reads), and `tensor[i] = number` (`lift_fresh`: a copy from
    host memory). On a GPU each one waits for the device to finish what it was given."""

    WATCHED = ("aten._local_scalar_dense", "aten.equal", "aten.is_nonzero", "aten.lift_fresh")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and str(func).startswith(self.WATCHED):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_no_step_or_admission_moves_a_number_between_host_and_device(graphed, monkeypatch):
    """What `torch.cuda.set_sync_debug_mode("error")` checks on a GPU (tests/test_gpu.py), seen on a
    CPU at the operator level, for admissions (but audiocraft's own forward over the prefix),
    replayed and eager steps, and every sampling rule."""
    warm_up(graphed)
    batched, traffic, windows_seen = graphed.loop.steps, HostTraffic(), []
    step, admit, prefill = batched.step, batched.admit, batched.decoder.prefill

    def watched_step(windows):
        windows_seen.append(len(windows))
        with traffic:  # dispatch modes are per thread: entered on the loop's own
            return step(windows)

    def watched_admit(window):
        with traffic:
            return admit(window)

    def audiocrafts_forward(*args):
        traffic.paused = True
        try:
            return prefill(*args)
        finally:
            traffic.paused = False

    monkeypatch.setattr(batched, "step", watched_step)
    monkeypatch.setattr(batched, "admit", watched_admit)
    monkeypatch.setattr(batched.decoder, "prefill", audiocrafts_forward)
    together(graphed, [(3, request(2, top_p=0.8)), (4, request(2, temperature=0.0))])
    batched.graphs_enabled = False
    tokens(graphed, 5, request(1, top_k=0))
    assert sum(windows_seen) > 150 and 2 in windows_seen and traffic.seen == []


def test_logits_that_are_not_finite_fail_the_request_with_the_reason_and_the_next_one_succeeds(graphed, monkeypatch):
    """On a device sampling cannot raise (it would need a host read): the step marks the slot, and
    the request raises when it reads its tokens."""
    decoder = graphed.loop.decoder
    forward = decoder._forward
    monkeypatch.setattr(decoder, "_forward", lambda *args: forward(*args) * float("nan"))
    failed = together(graphed, [(1, request(1, top_p=0.9)), (2, request(1))])
    assert all(isinstance(f, RuntimeError) and "NaN or infinite logits" in str(f) for f in failed)
    monkeypatch.setattr(decoder, "_forward", forward)
    assert tokens(graphed, 3, request(1)).shape[-1] == 50


def test_the_step_code_calls_nothing_that_copies_to_the_host():
    """`.cpu()`, `.tolist()`, `.numpy()` of a CPU tensor dispatch no operator: checked in the source.
    The one wait the host makes is on a CUDA event LOOKAHEAD steps old (`_keep_up`)."""
    forbidden = {"item", "cpu", "tolist", "numpy", "synchronize"}
    code: list[Any] = [
        steps.BatchedSteps,
        steps.SlotState,
        sampling.RowSampling,
        sampling.sample_rows,
        sampling.guided_rows,
    ]
    for source in [*code, fast_decode.SlotDecoder._forward]:
        tree = ast.parse(textwrap.dedent(inspect.getsource(source)))
        allowed = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef) and function.name == "_keep_up"
            for node in ast.walk(function)
        }
        reads = [
            f"{source.__qualname__}: .{node.attr} (line {node.lineno})"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in forbidden and id(node) not in allowed
        ]
        assert reads == []


@pytest.mark.parametrize("attention", ["rowwise", "sdpa"])
def test_a_span_met_without_a_graph_runs_eagerly_and_is_captured_once_nothing_decodes(
    tiny_weights, graphed, replayed, attention
):
    """No capture while a window decodes (a capture synchronises the device): a request meeting
    a span with no graph yet runs it eagerly with the same tokens; the graph is captured when the
    loop is idle (its warm-up runs' advance of the state put back), and the next request replays
    it to the same tokens. Row-wise attention: one graph for every step; SDPA: one per bucket."""
    eager = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(eager, 2, BATCHED)
    assert eager.loop is not None and graphed.loop is not None
    eager.loop.decoder.attention = graphed.loop.decoder.attention = attention
    spec = request(12, top_p=0.9)  # 600 steps: three buckets
    expected = tokens(eager, 9, spec)
    assert torch.equal(tokens(graphed, 9, spec), expected)
    after_idle(graphed)
    cache = graphed.loop.decoder.cache_length()
    spans = [cache] if attention == "rowwise" else [KV_BUCKET, 2 * KV_BUCKET, 3 * KV_BUCKET]
    assert sorted(graphed.loop.steps.graphs) == spans and len(replayed) == len(spans)
    assert all(active == 0 for *_, active in replayed)
    assert torch.equal(tokens(graphed, 9, spec), expected)
    assert len(replayed) == len(spans)


def test_the_graph_stand_in_fails_a_replay_after_what_a_real_graph_froze_has_changed(graphed):
    """The test of the test: a real graph keeps reading the addresses and numbers it was captured
    with, so ReplayedStep refuses a replay once the cache, the state or a number has moved."""
    warm_up(graphed)
    batched = graphed.loop.steps
    decoder = batched.decoder
    tokens(graphed, 1, request(1))  # replays pass
    keys, values = decoder.caches[0]
    decoder.caches[0] = (keys.clone(), values)  # the same numbers elsewhere in memory
    failed = together(graphed, [(2, request(1))])[0]
    assert isinstance(failed, AssertionError) and "cache changed since it was captured" in str(failed)
    decoder.caches[0] = (keys, values)
    graph = next(iter(batched.graphs.values()))
    decoder.attention = "sdpa"  # a setting the captured step read
    with pytest.raises(AssertionError, match=r"decoder\.attention changed since it was captured"):
        graph.replay()


def test_a_window_longer_than_the_slot_state_fails_alone_with_the_reason(graphed):
    batched = graphed.loop.steps
    batched.sequence_length = 30  # as if a window outgrew what was allocated
    failed = together(graphed, [(1, request(1))])[0]
    assert isinstance(failed, ValueError) and "longer than the 30 allocated" in str(failed)


def test_every_step_runs_every_slots_rows_and_free_slots_stay_at_position_zero(tiny_weights, monkeypatch):
    """Fixed shapes: a step's matrix products, norms and sampling never change with the company;
    a free slot's rows stay at position 0, so they read one position of the cache."""
    model = load_model(tiny_weights, device="cpu", slots=3)
    start_decoding_loop(model, 3, BATCHED)
    assert model.loop is not None and isinstance(model.loop.steps, BatchedSteps)
    batched, decoder, seen = model.loop.steps, model.loop.decoder, []
    forward = decoder._forward

    def recorded(sequence, caches, positions, span, busy):
        seen.append((sequence.shape[0], positions.tolist(), busy))
        return forward(sequence, caches, positions, span, busy)

    monkeypatch.setattr(decoder, "_forward", recorded)
    tokens(model, 1, request(1))
    assert len(seen) == decoding_steps(model.musicgen, 1) - 1  # every step but the first (the prefill's)
    # every row, busy or free; on a CPU only the busy slot's rows are multiplied (slot 0)
    assert all(rows == 6 and positions[2:] == [0, 0, 0, 0] and busy == (0,) for rows, positions, busy in seen)
    assert [positions[0] for _, positions, _ in seen] == list(range(seen[0][1][0], seen[0][1][0] + len(seen)))
    assert batched.state is not None and batched.state.positions.tolist() == [0] * 6  # it left: rows back at 0


def test_the_compile_setting_is_checked_on_every_machine(tiny_weights, monkeypatch):
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "reduce-overhead")  # captures graphs of its own: not offered
    with pytest.raises(
        ValueError, match="MUSICGEN_COMPILE must be one of 'off', 'default', 'max-autotune-no-cudagraphs'"
    ):
        load_model(tiny_weights, device="cpu")


@pytest.mark.slow  # Inductor compiles C++ for a CPU: about a minute
def test_the_compiled_step_gives_the_eager_steps_tokens(tiny_weights, monkeypatch, tmp_path):
    """MUSICGEN_COMPILE=default: the step through torch.compile (dynamic shapes: one compile for one
    slot, one for every other count, each for every cache bucket), greedy tokens exactly the
    per-slot path's alone, and in company too (row counts change last bits only)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    exact = load_model(tiny_weights, device="cpu", slots=2)
    specs = [(1, request(2, temperature=0.0)), (2, request(6, temperature=0.0))]  # 6 s: past one bucket
    expected = [tokens(exact, *spec) for spec in specs]
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "default")
    compiled = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(compiled, 2, batched_start("cpu"))
    assert compiled.loop is not None and isinstance(compiled.loop.steps, BatchedSteps)
    assert compiled.loop.steps._compiled is not None
    assert all(torch.equal(tokens(compiled, *spec), reference) for spec, reference in zip(specs, expected, strict=True))
    at_once = together(compiled, specs)
    assert all(torch.equal(mine, reference) for mine, reference in zip(at_once, expected, strict=True))
    assert compiled.loop.steps._compiled is not None  # nothing fell back to eager


def test_a_step_that_cannot_be_compiled_runs_eagerly_with_one_warning(tiny_weights, monkeypatch, logs):
    """No C compiler, a read-only cache folder, an Inductor bug: the server decodes on, eagerly."""
    from torch._dynamo.exc import TorchDynamoException

    exact = load_model(tiny_weights, device="cpu", slots=2)
    expected = tokens(exact, 1, request(2, temperature=0.0))
    monkeypatch.setenv(decoding_path.COMPILE_ENV, "default")
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, batched_start("cpu"))
    assert model.loop is not None and isinstance(model.loop.steps, BatchedSteps)
    attempts = []

    def uncompilable(*args):
        attempts.append(args)
        raise TorchDynamoException("CppCompileError: no working C compiler")

    model.loop.steps._compiled = uncompilable
    assert torch.equal(tokens(model, 1, request(2, temperature=0.0)), expected)
    assert len(attempts) == 1 and model.loop.steps._compiled is None
    warnings = [r.getMessage() for r in logs.records if "torch.compile" in r.getMessage()]
    assert warnings == [
        "torch.compile of the decoding step failed (CppCompileError: no working C compiler); "
        "running it eagerly from now on"
    ]
