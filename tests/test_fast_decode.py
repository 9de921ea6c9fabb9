"""Our static-cache decoding step gives exactly audiocraft's tokens (fp32, CPU, fixed seed)."""
import logging

import pytest
import torch

from musicgen_cog.fast_decode import DECODER_ENV, install_fast_decoder, unsupported_reason
from musicgen_cog.loading import load_model
from musicgen_cog.random_weights import write_finetune
from musicgen_cog.seeding import seed_everything
from tests.helpers import tone

SAMPLING = {"top_k": {"top_k": 250}, "top_p": {"top_p": 0.9}, "argmax": {"temperature": 0.0},
            "plain": {"top_k": 0}}
MODES = {"text": 2, "melody": 2, "continuation": 3, "windowed": 33}


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_model(tiny_weights)


def tokens(model, step, mode: str, static: bool = False, **sampling) -> torch.Tensor:
    musicgen, decoder = model.musicgen, model.decoder
    musicgen.lm._sample_next_token = step
    decoder.static_shapes = static
    musicgen.set_generation_params(duration=MODES[mode], **{"top_k": 250, "top_p": 0.0, "temperature": 1.0,
                                                            **sampling})
    melody = torch.from_numpy(tone(3.0, 32000, 1)).T[None]
    seed_everything(3)
    try:
        if mode == "melody":
            return musicgen.generate_with_chroma(["jazz"], melody, 32000, return_tokens=True)[1]
        if mode == "continuation":
            return musicgen.generate_continuation(melody[..., :32000], 32000, ["jazz"], return_tokens=True)[1]
        return musicgen.generate(["jazz"], return_tokens=True)[1]
    finally:
        musicgen.lm._sample_next_token = decoder._sample_next_token
        decoder.static_shapes = False


@pytest.mark.parametrize("sampling", SAMPLING, ids=list(SAMPLING))
@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_our_loop_gives_exactly_audiocrafts_tokens(model, mode, sampling):
    ours = tokens(model, model.decoder._sample_next_token, mode, **SAMPLING[sampling])
    reference = tokens(model, model.decoder.audiocraft_step, mode, **SAMPLING[sampling])
    assert ours.shape == reference.shape and ours.shape[-1] == int(MODES[mode] * 50)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("sampling", ["top_k", "argmax", "plain"])
def test_the_graphable_fixed_shape_step_matches_too(model, sampling):
    """The step a CUDA graph captures (mask over the whole cache). Under top-p its last-bit
    differences can move the cumulative-probability cut, so top-p is not compared exactly."""
    ours = tokens(model, model.decoder._sample_next_token, "continuation", static=True, **SAMPLING[sampling])
    assert torch.equal(ours, tokens(model, model.decoder.audiocraft_step, "continuation", **SAMPLING[sampling]))


def test_predictions_run_through_our_step(run, predictor, monkeypatch):
    calls = []
    forward = predictor.model.decoder._forward
    monkeypatch.setattr(predictor.model.decoder, "_forward", lambda *a: calls.append(1) or forward(*a))
    run(duration=1)
    assert len(calls) == 52  # 53 decoding steps: the first is audiocraft's own prefix step


def test_the_environment_variable_selects_audiocrafts_loop(tiny_weights, monkeypatch):
    monkeypatch.setenv(DECODER_ENV, "audiocraft")
    model = load_model(tiny_weights)
    assert model.decoder is None and "_sample_next_token" not in vars(model.musicgen.lm)
    monkeypatch.setenv(DECODER_ENV, "turbo")
    with pytest.raises(ValueError, match="MUSICGEN_DECODER must be 'fast' or 'audiocraft', got 'turbo'"):
        install_fast_decoder(model.musicgen.lm, 100)


def test_an_architecture_we_do_not_reproduce_falls_back_to_audiocraft(tiny_weights, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="musicgen_cog")
    logging.getLogger("musicgen_cog").addHandler(caplog.handler)
    try:
        model = load_model(tiny_weights, write_finetune(tmp_path / "text.tar", melody=False))
    finally:
        logging.getLogger("musicgen_cog").removeHandler(caplog.handler)
    assert model.decoder is None
    assert "cross-attention" in unsupported_reason(model.musicgen.lm)
    assert any("decoding with audiocraft's own loop (conditions fused" in r.getMessage() for r in caplog.records)
