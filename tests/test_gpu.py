"""On a CUDA device (`pytest -m gpu`; skipped without one): the captured fp16 step at melody size,
proven by setup()'s own proof, and what the proof cannot see (host syncs, captures, streams, memory).

A random LM of MusicGen-melody's size (48 layers, d=1536) in audiocraft's GPU layout, the tiny
folder's codec, T5 and demucs (`bench/models.py`), SLOTS slots as the server runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.audio.decoding import Audio
from musicgen_cog.model import proof, steps
from musicgen_cog.model.decoding_path import LADDER
from musicgen_cog.model.generation import GenerationRequest, generate, generate_tokens
from musicgen_cog.model.memory import CUBLAS_WORKSPACE
from musicgen_cog.model.proof import settle_decoding_path
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.steps import BatchedSteps
from tests.helpers import tone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SLOTS = DEFAULT_CONCURRENCY  # as the server runs them
PROMPT = "lofi hip hop beat"
GREEDY = Sampling(top_k=250, top_p=0.0, temperature=0.0, cfg_coef=3.0)
# bytes beyond weights and KV cache: T5, codec, demucs, activations, the graph pool, and a cuBLAS
# workspace for each stream (the loop's, the capture's, each request thread's and the test's)
HEADROOM = (2 << 30) + CUBLAS_WORKSPACE * (SLOTS + 3)


@pytest.fixture(scope="module")
def proven() -> Iterator[tuple[Any, Any]]:
    """The model after setup()'s warm-up (no step captures from here on: a capture synchronises)
    and the proof of its path, with what the proof found."""
    from bench.models import bench_model

    loaded, _ = bench_model(slots=SLOTS)
    found = settle_decoding_path(loaded)
    torch.cuda.reset_peak_memory_stats()  # what serving holds, not setup's proof (its random data)
    yield loaded, found
    if loaded.loop is not None:
        loaded.loop.close()


@pytest.fixture(scope="module")
def model(proven) -> Any:
    loaded, _ = proven
    assert isinstance(loaded.loop.steps, BatchedSteps) and loaded.loop.steps.graphs_enabled
    return loaded


def clip(seconds: float) -> Audio:
    return Audio(torch.from_numpy(tone(seconds, 32000, 1)).T.contiguous(), 32000)


def tokens(model: Any, request: GenerationRequest, seed: int = 1) -> torch.Tensor:
    return generate_tokens(model, request, RequestRandomness(seed, model.musicgen.device))


def test_setup_proves_the_top_rung_on_this_card(proven):
    """Warm-up and the proof as setup() runs them: graphs and row-wise attention pass every check
    (`pytest -s` shows the figures), and no rung was stepped down from."""
    model, found = proven
    print(f"\ndecoding path: {found}")
    assert model.path == LADDER[0] and found.path == LADDER[0]
    assert [check.name for check in found.checks] == ["attention fp32", "attention fp16", "step", "company", "sampler"]


def test_the_graphs_give_audiocrafts_logits_by_the_proofs_measure_and_finite_audio(model):
    """Audiocraft's own forward over the sequences our graphs chose, under the same autocast: the
    guided logits' error relative to their spread within the proof's fp16 threshold (near-ties do
    not matter, as they would to an argmax agreement)."""
    figure, company = model.loop.call(
        lambda: proof.decode_and_compare(model, model.loop.steps), when_idle=True
    ).result()
    assert figure <= proof.STEP_ERROR[torch.float16] and company == 0
    wav = generate(model, GenerationRequest(PROMPT, 8.0, GREEDY), RequestRandomness(1, model.musicgen.device))
    assert wav.shape[-1] == 8 * model.musicgen.sample_rate  # and finite: generate raises otherwise


def strict(work, errors: list) -> Any:
    """`work` with any host synchronisation an error (recorded in `errors` too)."""

    def run(*args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return work(*args)
        except RuntimeError as exc:
            errors.append(exc)
            raise
        finally:
            torch.cuda.set_sync_debug_mode(0)

    return run


def lenient(work) -> Any:
    """`work` allowed to synchronise, inside a strict block."""

    def run(*args):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return work(*args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    return run


def test_no_step_or_admission_synchronises_the_host_with_the_device(model, monkeypatch):
    """Allowed: audiocraft's own forward over a prefix, and the one deliberate wait, for the step
    launched LOOKAHEAD steps before."""
    batched: BatchedSteps = model.loop.steps
    errors: list = []
    monkeypatch.setattr(batched, "step", strict(batched.step, errors))
    monkeypatch.setattr(batched, "admit", strict(batched.admit, errors))
    monkeypatch.setattr(batched.streams, "throttle", lenient(batched.streams.throttle))
    monkeypatch.setattr(batched.decoder, "prefill", lenient(batched.decoder.prefill))
    for rule in (Sampling(250, 0.0, 1.0, 3.0), Sampling(0, 0.9, 1.0, 3.0), GREEDY):
        tokens(model, GenerationRequest(PROMPT, 2.0, rule))
    assert errors == []


def test_after_warm_up_no_request_captures_a_graph_and_memory_stays_bounded(model, monkeypatch):
    batched: BatchedSteps = model.loop.steps
    cache = batched.decoder.cache_length()
    assert sorted(batched.graphs) == sorted(batched.shapes())
    captures = []

    class Counted(steps.CudaGraphStep):
        def _capture(self, step, stream):
            captures.append(1)
            super()._capture(step, stream)

    monkeypatch.setattr(steps, "CudaGraphStep", Counted)
    sampling = Sampling(250, 0.0, 1.0, 3.0)
    requests = [
        GenerationRequest(PROMPT, 8.0, sampling),
        GenerationRequest(PROMPT, 8.0, sampling, melody=clip(8.0)),
        GenerationRequest(PROMPT, 8.0, sampling, continue_from=clip(4.0)),
        GenerationRequest(PROMPT, 30.0, sampling),
        GenerationRequest(PROMPT, 33.0, sampling, melody=clip(10.0)),  # two windows, the melody looped
    ]
    done = []

    def one(request: GenerationRequest) -> None:
        done.append(tokens(model, request).shape[-1])

    threads = [threading.Thread(target=one, args=(request,)) for request in requests]  # in company, as served
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == len(requests) and captures == [] and batched.decoder.cache_length() == cache
    assert not batched.pending  # no step ran eagerly for want of a graph
    weights = sum(p.numel() * p.element_size() for p in model.musicgen.lm.parameters())
    kv = sum(keys.numel() * keys.element_size() * 2 for keys, _ in batched.decoder.caches)
    assert torch.cuda.max_memory_allocated() <= weights + kv + HEADROOM


def test_a_seeded_request_gives_the_same_tokens_alone_and_in_company_in_another_slot(model):
    """Row-wise attention and fixed shapes: on the GPU too a request's numbers do not depend on
    who else decodes, or in which slot it runs."""
    seeded = GenerationRequest(PROMPT, 4.0, Sampling(250, 0.0, 1.0, 3.0))
    alone = tokens(model, seeded, seed=42)
    others = [GenerationRequest(f"{PROMPT} {i}", 2.0 + 3 * i, Sampling(0, 0.9, 1.0, 3.0)) for i in range(3)]
    results: dict[int, torch.Tensor] = {}

    def one(index: int, request: GenerationRequest, seed: int) -> None:
        results[index] = tokens(model, request, seed=seed)

    threads = [threading.Thread(target=one, args=(i, r, i)) for i, r in enumerate(others)]
    for thread in threads:
        thread.start()
    while len(model.loop._active) < len(others):  # it joins them while they decode, in a slot above theirs
        threading.Event().wait(0.01)
    one(len(others), seeded, 42)
    for thread in threads:
        thread.join()
    assert torch.equal(results[len(others)], alone)


def test_the_loop_steps_on_its_own_high_priority_stream_and_requests_on_theirs(model, monkeypatch):
    """A step is never queued behind a request's conditioning, codec or MBD on one stream."""
    batched: BatchedSteps = model.loop.steps
    seen: list[torch.cuda.Stream] = []
    step = batched.step

    def recorded(windows):
        seen.append(torch.cuda.current_stream())
        return step(windows)

    monkeypatch.setattr(batched, "step", recorded)
    with model.streams.request():
        mine = torch.cuda.current_stream()
        tokens(model, GenerationRequest(PROMPT, 1.0, GREEDY))
    _, highest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # static
    assert seen and {s.cuda_stream for s in seen} == {seen[0].cuda_stream} != {mine.cuda_stream}
    assert seen[0].priority == highest and seen[0] != torch.cuda.default_stream()
