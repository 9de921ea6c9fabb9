"""Our decoding (shared loop, static-cache step) gives exactly audiocraft's tokens (fp32, CPU, fixed seed).

Every model here is pinned to the CPU: exactness is a CPU fp32 property (test_gpu.py holds the GPU's).
"""

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from musicgen_cog.audio.decoding import Audio
from musicgen_cog.model import steps
from musicgen_cog.model.decoding_loop import GenerationCancelled
from musicgen_cog.model.decoding_path import DECODER_ENV, PER_SLOT, DecodingPath
from musicgen_cog.model.fast_decode import KV_BUCKET, unsupported_reason
from musicgen_cog.model.generation import GenerationRequest, generate_tokens
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.warm_up import warm_up
from musicgen_cog.weights.random_weights import write_finetune
from tests.helpers import decoding_steps, tone
from tests.model.conftest import ReplayedStep
from tests.model.test_decoding_loop import after_idle

SAMPLING: dict[str, dict[str, Any]] = {
    "top_k": {"top_k": 250},
    "top_p": {"top_p": 0.9},
    "argmax": {"temperature": 0.0},
    "plain": {"top_k": 0},
}
MODES = {"text": 2, "melody": 2, "continuation": 3, "windowed": 33}
SEED = 3


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_model(tiny_weights, device="cpu", slots=2)


def with_decoder(model, batched: bool = False, graphs: bool = False):
    """`model` with a fresh loop over fresh steps of the given kind (CPU runs both kinds)."""
    start_decoding_loop(model, model.loop.slots, DecodingPath("batched", graphs=graphs) if batched else PER_SLOT)
    return model


def one_slot(tiny_weights, **kind) -> Any:
    """A model whose loop runs its slot's rows in one fixed-shape step, as on a GPU. One slot: the
    step then multiplies 2 rows, as audiocraft's does (oneDNN's kernels, hence last bits, depend
    on the row count), so its greedy tokens can be compared with audiocraft's bit for bit."""
    return with_decoder(load_model(tiny_weights, device="cpu", slots=1), batched=True, **kind)


@pytest.fixture
def batched(tiny_weights):
    return one_slot(tiny_weights)


def melody_clip() -> torch.Tensor:
    return torch.from_numpy(tone(3.0, 32000, 1)).T[None]


def ours(model, mode: str, seed: int = SEED, seconds: float | None = None, **sampling) -> torch.Tensor:
    sampling = {"top_k": 250, "top_p": 0.0, "temperature": 1.0, **sampling}
    clip = Audio(melody_clip()[0], 32000)
    continuation = mode == "continuation"
    request = GenerationRequest(
        prompt="jazz",
        duration=seconds or MODES[mode] - (1 if continuation else 0),
        sampling=Sampling(sampling["top_k"], sampling["top_p"], sampling["temperature"], 3.0),
        melody=clip if mode == "melody" else None,
        continue_from=Audio(clip.samples[:, :32000], 32000) if continuation else None,
    )
    return generate_tokens(model, request, RequestRandomness(seed, model.musicgen.device))


def audiocrafts(model, mode: str, seed: int = SEED, **sampling) -> torch.Tensor:
    """audiocraft's own generate, seeded as a request alone would be."""
    musicgen = model.musicgen
    musicgen.set_generation_params(duration=MODES[mode], **{"top_k": 250, "top_p": 0.0, "temperature": 1.0, **sampling})
    melody = melody_clip()
    random.seed(seed)
    torch.manual_seed(seed)
    if mode == "melody":
        return musicgen.generate_with_chroma(["jazz"], melody, 32000, return_tokens=True)[1]
    if mode == "continuation":
        return musicgen.generate_continuation(melody[..., :32000], 32000, ["jazz"], return_tokens=True)[1]
    return musicgen.generate(["jazz"], return_tokens=True)[1]


@pytest.mark.parametrize("sampling", SAMPLING, ids=list(SAMPLING))
@pytest.mark.parametrize(
    "mode",
    [pytest.param(mode, marks=pytest.mark.slow) if MODES[mode] > 30 else mode for mode in MODES],
    ids=list(MODES),
)
def test_our_loop_gives_exactly_audiocrafts_tokens(model, mode, sampling):
    mine = ours(model, mode, **SAMPLING[sampling])
    reference = audiocrafts(model, mode, **SAMPLING[sampling])
    assert mine.shape == reference.shape and mine.shape[-1] == int(MODES[mode] * model.musicgen.frame_rate)
    assert torch.equal(mine, reference)


@pytest.mark.parametrize("mode", ["text", "melody", "continuation"])
def test_the_graphable_all_slots_step_gives_the_same_tokens_at_temperature_zero(model, batched, mode):
    """The step a CUDA graph captures (every slot, per-row positions, mask over buckets, guidance,
    sampling and writing on the device). It draws by inverse CDF, not torch.multinomial: its
    sampled tokens are compared by rule in test_sampling, its greedy ones here, exactly."""
    assert torch.equal(ours(batched, mode, temperature=0.0), ours(model, mode, temperature=0.0))


@pytest.mark.parametrize("sampling", SAMPLING)
def test_the_all_slots_step_repeats_a_seed_and_follows_another(batched, sampling):
    rule = SAMPLING[sampling]
    first, again, other = (ours(batched, "text", seed=seed, **rule) for seed in (SEED, SEED, SEED + 1))
    assert torch.equal(first, again)
    assert torch.equal(first, other) == (sampling == "argmax")


def test_the_all_slots_step_attends_to_whole_buckets_of_the_cache(batched):
    ours(batched, "text", seconds=6)
    decoder = batched.loop.decoder
    length = decoder.cache_length()
    assert length % KV_BUCKET == 0 and length >= decoding_steps(batched.musicgen, 6) > KV_BUCKET
    assert decoder.caches[0][0].shape[0] == decoder.rows == 2  # two rows (the CFG pair) per slot
    assert [decoder.attended_length(p) for p in (0, KV_BUCKET - 1, KV_BUCKET, length - 1)] == [
        KV_BUCKET,
        KV_BUCKET,
        2 * KV_BUCKET,
        length,
    ]


@pytest.mark.slow  # a 33 s generation, two windows
def test_replayed_graph_steps_give_exactly_audiocrafts_tokens_from_one_capture(model, tiny_weights, replayed):
    """Row-wise attention reads every row's length from the device: one graph, captured at
    warm-up, serves every step of both windows."""
    graphed = one_slot(tiny_weights, graphs=True)
    warm_up(graphed)
    assert len(replayed) == 1 and list(graphed.loop.steps.graphs) == [graphed.loop.decoder.cache_length()]
    assert torch.equal(ours(graphed, "windowed", temperature=0.0), audiocrafts(model, "windowed", temperature=0.0))
    assert len(replayed) == 1  # every step replayed it


def test_graph_steps_are_captured_under_the_callers_autocast_without_its_cache(tiny_weights, replayed, monkeypatch):
    """On a GPU audiocraft keeps embeddings and output layers in fp32 under fp16 autocast: a graph
    captured without it would compute other numbers (or fail on mixed dtypes)."""
    bf16 = load_model(tiny_weights, device="cpu", slots=2)
    monkeypatch.setattr(bf16, "autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    eager = ours(with_decoder(bf16, batched=True), "continuation")
    graphing = with_decoder(bf16, batched=True, graphs=True)
    ours(graphing, "continuation")  # eager steps: the graph is captured once the loop is idle
    after_idle(graphing)
    assert torch.equal(ours(graphing, "continuation"), eager)  # replayed: the same numbers
    assert replayed == [(True, torch.bfloat16, False, True, 0)]  # autocast, no cast cache, generators held


def test_a_capture_that_fails_after_setup_falls_back_to_eager_steps_and_fails_health(
    model, tiny_weights, monkeypatch, logs
):
    """Not out of memory: graphs go off for good and requests decode on eagerly, but PyTorch's
    allocator may believe a capture is still under way, so health fails and the platform replaces
    the server."""
    attempts = []

    class UncapturableStep(ReplayedStep):
        def _capture(self, step, stream):
            attempts.append(step)
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(steps, "CudaGraphStep", UncapturableStep)
    graphing = one_slot(tiny_weights, graphs=True)
    expected = ours(model, "text", temperature=0.0)
    for _ in range(2):
        assert torch.equal(ours(graphing, "text", temperature=0.0), expected)
        after_idle(graphing)
    assert len(attempts) == 1 and not graphing.loop.steps.graphs_enabled  # off after the first failure
    assert not graphing.healthy() and graphing.health.ok  # replace it; its requests do not fail
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert errors == [
        "CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing) after setup; "
        "decoding on without graphs; health now fails so that the platform replaces this server"
    ]


def test_predictions_run_through_our_steps(run, predictor, monkeypatch):
    """On either device: the predictor's loop takes every step but the first, which runs
    audiocraft's forward over the conditioning prefix."""
    calls = []
    steps = predictor.model.loop.steps
    step = steps.step

    def counted(windows):
        calls.append(len(windows))
        return step(windows)

    monkeypatch.setattr(steps, "step", counted)
    run(duration=1)
    assert calls == [1] * (decoding_steps(predictor.model.musicgen, 1) - 1)


def test_the_environment_variable_selects_audiocrafts_loop(tiny_weights, monkeypatch):
    monkeypatch.setenv(DECODER_ENV, "audiocraft")
    model = load_model(tiny_weights, device="cpu")
    assert model.loop is None
    assert torch.equal(ours(model, "text"), audiocrafts(model, "text"))  # its own loop, drawing the request's stream
    monkeypatch.setenv(DECODER_ENV, "turbo")
    with pytest.raises(
        ValueError, match="MUSICGEN_DECODER must be one of 'auto', 'batched', 'per-slot', 'audiocraft', got 'turbo'"
    ):
        load_model(tiny_weights, device="cpu")


def test_an_architecture_we_do_not_reproduce_falls_back_to_audiocraft(tiny_weights, tmp_path, logs):
    model = load_model(tiny_weights, write_finetune(tmp_path / "text.tar", melody=False))
    assert model.loop is None
    assert "cross-attention" in str(unsupported_reason(model.musicgen.lm))
    expected = "decoding with audiocraft's own loop, one request at a time (conditions fused"
    assert any(expected in r.getMessage() for r in logs.records)


def test_audiocrafts_loop_stops_at_a_cancel_and_a_request_waiting_for_it_too(tiny_weights, monkeypatch):
    """audiocraft's own loop serves one request at a time: both the running one and one waiting
    for it leave when cancelled (an async predict's thread cannot be interrupted otherwise)."""
    monkeypatch.setenv(DECODER_ENV, "audiocraft")
    fallback = load_model(tiny_weights, device="cpu")
    running, waiting = threading.Event(), threading.Event()

    def long(cancelled):
        sampling = Sampling(250, 0.0, 1.0, 3.0)
        request = GenerationRequest(prompt="x", duration=25, sampling=sampling, cancelled=cancelled)
        return generate_tokens(fallback, request, RequestRandomness(1, "cpu"))

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(long, running)
        while not fallback.exclusive.locked():
            time.sleep(0.01)
        second = pool.submit(long, waiting)
        waiting.set()
        with pytest.raises(GenerationCancelled):
            second.result(timeout=5)
        assert first.running()
        running.set()
        with pytest.raises(GenerationCancelled):
            first.result(timeout=5)
    assert not fallback.exclusive.locked()
