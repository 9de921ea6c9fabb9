"""Our static-cache decoding step gives exactly audiocraft's tokens (fp32, CPU, fixed seed)."""

import contextlib
import logging
from typing import Any, ClassVar

import pytest
import torch

from musicgen_cog.api.seeding import seed_everything
from musicgen_cog.model import fast_decode
from musicgen_cog.model.fast_decode import (
    DECODER_ENV,
    KV_BUCKET,
    CudaGraphStep,
    install_fast_decoder,
    unsupported_reason,
)
from musicgen_cog.model.loading import load_model
from musicgen_cog.weights.random_weights import write_finetune
from tests.helpers import decoding_steps, tone

SAMPLING: dict[str, dict[str, Any]] = {
    "top_k": {"top_k": 250},
    "top_p": {"top_p": 0.9},
    "argmax": {"temperature": 0.0},
    "plain": {"top_k": 0},
}
MODES = {"text": 2, "melody": 2, "continuation": 3, "windowed": 33}


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_model(tiny_weights)


class ReplayedStep(CudaGraphStep):
    """CudaGraphStep on a CPU: its buffers, calls and capture context, with the CUDA graph replaced
    by what a graph freezes: the step, the autocast and the cache memory it was captured with."""

    captured: ClassVar[list] = []

    def __init__(self, decoder, sequence, length):
        self.decoder, self.caches = decoder, decoder.caches
        super().__init__(decoder, sequence, length)

    def _capture(self, step):
        self.step = step
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        self.captured.append((self.length, *self.autocast, torch.is_autocast_cache_enabled()))
        return step()

    def replay(self):
        assert self.decoder.caches is self.caches, "a graph replayed after its caches were reallocated"
        enabled, dtype = self.autocast
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            self.logits.copy_(self.step())


def tokens(
    model, step, mode: str, static: bool = False, graphs: bool = False, autocast=None, **sampling
) -> torch.Tensor:
    musicgen, decoder = model.musicgen, model.decoder
    musicgen.lm._sample_next_token = step
    decoder.static_shapes, decoder.graphs_enabled = static, graphs
    musicgen.set_generation_params(duration=MODES[mode], **{"top_k": 250, "top_p": 0.0, "temperature": 1.0, **sampling})
    melody = torch.from_numpy(tone(3.0, 32000, 1)).T[None]
    seed_everything(3)
    try:
        with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
            if mode == "melody":
                return musicgen.generate_with_chroma(["jazz"], melody, 32000, return_tokens=True)[1]
            if mode == "continuation":
                return musicgen.generate_continuation(melody[..., :32000], 32000, ["jazz"], return_tokens=True)[1]
            return musicgen.generate(["jazz"], return_tokens=True)[1]
    finally:
        musicgen.lm._sample_next_token = decoder._sample_next_token
        decoder.static_shapes = decoder.graphs_enabled = False


@pytest.mark.parametrize("sampling", SAMPLING, ids=list(SAMPLING))
@pytest.mark.parametrize(
    "mode",
    [pytest.param(mode, marks=pytest.mark.slow) if MODES[mode] > 30 else mode for mode in MODES],
    ids=list(MODES),
)
def test_our_loop_gives_exactly_audiocrafts_tokens(model, mode, sampling):
    ours = tokens(model, model.decoder._sample_next_token, mode, **SAMPLING[sampling])
    reference = tokens(model, model.decoder.audiocraft_step, mode, **SAMPLING[sampling])
    assert ours.shape == reference.shape and ours.shape[-1] == int(MODES[mode] * model.musicgen.frame_rate)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("sampling", ["top_k", "argmax", "plain"])
def test_the_graphable_fixed_shape_step_matches_too(model, sampling):
    """The step a CUDA graph captures (mask over the whole cache). Under top-p its last-bit
    differences can move the cumulative-probability cut, so top-p is not compared exactly."""
    ours = tokens(model, model.decoder._sample_next_token, "continuation", static=True, **SAMPLING[sampling])
    assert torch.equal(ours, tokens(model, model.decoder.audiocraft_step, "continuation", **SAMPLING[sampling]))


def test_the_fixed_shape_step_attends_to_whole_buckets_of_the_cache(model):
    tokens(model, model.decoder._sample_next_token, "text", static=True)
    cache_length = model.decoder.caches[0][0].shape[2]
    assert cache_length % KV_BUCKET == 0 and cache_length >= model.decoder.max_steps
    assert [model.decoder.attended_length(p) for p in (0, KV_BUCKET - 1, KV_BUCKET, cache_length - 1)] == [
        KV_BUCKET,
        KV_BUCKET,
        2 * KV_BUCKET,
        cache_length,
    ]


@pytest.mark.slow  # a 33 s generation, two windows
def test_replayed_graph_steps_give_exactly_audiocrafts_tokens_one_capture_per_bucket(model, monkeypatch):
    monkeypatch.setattr(fast_decode, "CudaGraphStep", ReplayedStep)
    monkeypatch.setattr(ReplayedStep, "captured", [])
    reference = tokens(model, model.decoder.audiocraft_step, "windowed")
    assert torch.equal(tokens(model, model.decoder._sample_next_token, "windowed", static=True, graphs=True), reference)
    lengths = [length for length, *_ in ReplayedStep.captured]
    assert len(set(lengths)) >= 6 and all(length % KV_BUCKET == 0 for length in lengths)
    tokens(model, model.decoder._sample_next_token, "text", static=True, graphs=True)
    captures = len(ReplayedStep.captured)
    tokens(model, model.decoder._sample_next_token, "text", static=True, graphs=True)
    assert len(ReplayedStep.captured) == captures  # a later request of the same shape only replays


def test_graph_steps_are_captured_under_the_callers_autocast_without_its_cache(model, monkeypatch):
    """On a GPU audiocraft keeps embeddings and output layers in fp32 under fp16 autocast: a graph
    captured without it would compute other numbers (or fail on mixed dtypes)."""
    monkeypatch.setattr(fast_decode, "CudaGraphStep", ReplayedStep)
    monkeypatch.setattr(ReplayedStep, "captured", [])
    eager = tokens(model, model.decoder._sample_next_token, "continuation", static=True, autocast=torch.bfloat16)
    graphed = tokens(
        model, model.decoder._sample_next_token, "continuation", static=True, graphs=True, autocast=torch.bfloat16
    )
    assert torch.equal(graphed, eager)
    assert {tuple(autocast) for _, *autocast in ReplayedStep.captured} == {(True, torch.bfloat16, False)}


def test_a_failed_capture_falls_back_to_eager_steps_with_one_warning(model, monkeypatch, logs):
    attempts = []

    class UncapturableStep(ReplayedStep):
        def _capture(self, step):
            attempts.append(self.length)
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fast_decode, "CudaGraphStep", UncapturableStep)
    fallen_back = tokens(model, model.decoder._sample_next_token, "text", static=True, graphs=True)
    assert torch.equal(fallen_back, tokens(model, model.decoder._sample_next_token, "text", static=True))
    assert len(attempts) == 1  # graphs stay off after the first failure: no capture attempt per step
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert warnings == [
        "CUDA graph capture failed (operation not permitted when stream is capturing); "
        "decoding without graphs from now on"
    ]


def test_predictions_run_through_our_step(run, predictor, monkeypatch):
    calls = []
    forward = predictor.model.decoder._forward

    def counted(*args):
        calls.append(1)
        return forward(*args)

    monkeypatch.setattr(predictor.model.decoder, "_forward", counted)
    run(duration=1)
    # every decoding step but the first, which runs audiocraft's forward over the conditioning prefix
    assert len(calls) == decoding_steps(predictor.model.musicgen, 1) - 1


def test_the_environment_variable_selects_audiocrafts_loop(tiny_weights, monkeypatch):
    monkeypatch.setenv(DECODER_ENV, "audiocraft")
    model = load_model(tiny_weights)
    assert model.decoder is None and "_sample_next_token" not in vars(model.musicgen.lm)
    monkeypatch.setenv(DECODER_ENV, "turbo")
    with pytest.raises(ValueError, match="MUSICGEN_DECODER must be 'fast' or 'audiocraft', got 'turbo'"):
        install_fast_decoder(model.musicgen)


def test_an_architecture_we_do_not_reproduce_falls_back_to_audiocraft(tiny_weights, tmp_path, logs):
    model = load_model(tiny_weights, write_finetune(tmp_path / "text.tar", melody=False))
    assert model.decoder is None
    assert "cross-attention" in str(unsupported_reason(model.musicgen.lm))
    assert any("decoding with audiocraft's own loop (conditions fused" in r.getMessage() for r in logs.records)
