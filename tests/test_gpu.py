"""On a CUDA device (`pytest -m gpu`; skipped without one): the captured fp16 step at melody size.

A random LM of MusicGen-melody's size (48 layers, d=1536) in audiocraft's GPU layout, the tiny
folder's codec, T5 and demucs (`bench/models.py`), SLOTS slots as the server runs them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.audio.decoding import Audio
from musicgen_cog.model import steps
from musicgen_cog.model.generation import GenerationRequest, generate, generate_tokens
from musicgen_cog.model.memory import CUBLAS_WORKSPACE
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.steps import BatchedSteps
from musicgen_cog.model.warm_up import warm_up
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
def model() -> Iterator[Any]:
    from bench.models import bench_model

    torch.cuda.reset_peak_memory_stats()
    loaded, _ = bench_model(slots=SLOTS)
    assert isinstance(loaded.loop.steps, BatchedSteps) and loaded.loop.steps.graphs_enabled
    warm_up(loaded)  # as setup() does: no step captures (capture synchronises) from here on
    yield loaded
    loaded.loop.close()


def clip(seconds: float) -> Audio:
    return Audio(torch.from_numpy(tone(seconds, 32000, 1)).T.contiguous(), 32000)


def tokens(model: Any, request: GenerationRequest, seed: int = 1) -> torch.Tensor:
    return generate_tokens(model, request, RequestRandomness(seed, model.musicgen.device))


def test_the_graphs_give_finite_audio_and_audiocrafts_greedy_choices(model):
    """Teacher-forced: audiocraft's own forward over our greedy sequence, guided as it guides, picks
    our token at 99 % of the steps or more. fp16 rounds otherwise in a fixed-shape step than in
    audiocraft's growing one; run free, the two would part at the first near-tie and never meet."""
    musicgen, lm = model.musicgen, model.musicgen.lm
    ours = tokens(model, GenerationRequest(PROMPT, 8.0, GREEDY))
    attributes, _ = musicgen._prepare_tokens_and_attributes([PROMPT], None)
    pair = attributes + ClassifierFreeGuidanceDropout(p=1.0)(attributes)  # one batch: one padded prefix length
    with torch.no_grad(), model.autocast():
        predicted = lm.compute_predictions(torch.cat([ours, ours]), pair)
    conditional, unconditional = predicted.logits.split(1)
    guided = unconditional + (conditional - unconditional) * GREEDY.cfg_coef
    same = guided.argmax(dim=-1) == ours
    assert same[predicted.mask[:1]].float().mean().item() >= 0.99
    wav = generate(model, GenerationRequest(PROMPT, 8.0, GREEDY), RequestRandomness(1, musicgen.device))
    assert wav.shape[-1] == 8 * musicgen.sample_rate  # and finite: generate raises otherwise


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
