"""generate(): each mode's length, the melody actually processed, the continuation bound, MBD, NaN guard."""

import pytest
import torch

from musicgen_cog.audio.decoding import Audio
from musicgen_cog.errors import InputError
from musicgen_cog.model import generation
from musicgen_cog.model.generation import GenerationRequest
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from tests.helpers import SAMPLE_RATE, tone

SAMPLING = Sampling(top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0)


def clip(seconds: float, rate: int = 8000) -> Audio:
    return Audio(torch.from_numpy(tone(seconds, rate, 1)).T.contiguous(), rate)


@pytest.fixture
def model(predictor):
    return predictor.model


def generate(model, request: GenerationRequest, seed: int = 1) -> torch.Tensor:
    return generation.generate(model, request, RequestRandomness(seed, "cpu"))


def test_text_mode_gives_duration_seconds_at_the_model_rate(model):
    wav = generate(model, GenerationRequest(prompt="jazz", duration=2, sampling=SAMPLING))
    assert wav.shape == (1, 2 * SAMPLE_RATE) and wav.dtype == torch.float32


def test_continuation_gives_the_prompt_then_duration_new_seconds(model):
    wav = generate(model, GenerationRequest(prompt="jazz", duration=1, sampling=SAMPLING, continue_from=clip(2)))
    assert wav.shape == (1, 3 * SAMPLE_RATE)


def test_a_continuation_prompt_must_leave_room_in_the_window(model):
    with pytest.raises(InputError, match=r"must be at most 29 s .* continuation_start and continuation_end") as caught:
        generate(model, GenerationRequest(prompt="x", duration=1, sampling=SAMPLING, continue_from=clip(29.5)))
    assert caught.value.input_name == "input_audio"


@pytest.mark.parametrize(
    "duration, melody_seconds, expected_seconds",
    [(8, 45, 30), (8, 20, 20), (40, 100, 70)],
    ids=["one window: cut to it", "shorter than a window: whole", "two windows: each window's reach"],
)
def test_only_the_melody_that_can_condition_the_output_is_processed(
    model, monkeypatch, duration, melody_seconds, expected_seconds
):
    lengths = []

    def record_and_stop(descriptions, prompt, melody_wavs):
        lengths.append(melody_wavs[0].shape[-1] / SAMPLE_RATE)
        raise RuntimeError("stop after recording")

    monkeypatch.setattr(model.musicgen, "_prepare_tokens_and_attributes", record_and_stop)
    with pytest.raises(RuntimeError, match="stop after recording"):
        generate(model, GenerationRequest(prompt="x", duration=duration, sampling=SAMPLING,
                                          melody=clip(melody_seconds)))  # fmt: skip
    assert lengths == [expected_seconds]


def test_mbd_decodes_the_tokens_instead_of_the_codec(model, monkeypatch):
    plain = generate(model, GenerationRequest(prompt="x", duration=1, sampling=SAMPLING), seed=5)
    decoded = []
    mbd = model.mbd()

    def silence_from(tokens):
        decoded.append(tokens)
        return torch.zeros(1, 1, SAMPLE_RATE)

    monkeypatch.setattr(mbd, "tokens_to_wav", silence_from)
    wav = generate(model, GenerationRequest(prompt="x", duration=1, sampling=SAMPLING, multi_band_diffusion=True), 5)
    lm = model.musicgen.lm
    assert len(decoded) == 1 and decoded[0].shape == (1, lm.num_codebooks, model.musicgen.frame_rate)
    assert torch.equal(wav, torch.zeros(1, SAMPLE_RATE)) and not torch.equal(plain, wav)


def test_non_finite_audio_from_the_model_is_an_error_not_a_file(model, monkeypatch):
    nan_codec = model.musicgen.compression_model
    monkeypatch.setattr(nan_codec, "decode", lambda codes, scale=None: torch.full((1, 1, SAMPLE_RATE), float("nan")))
    with pytest.raises(RuntimeError, match="the model produced NaN or infinite samples; try again with another seed"):
        generate(model, GenerationRequest(prompt="x", duration=1, sampling=SAMPLING))


def test_mbd_noise_continues_the_requests_own_stream(model, monkeypatch):
    """MBD draws from torch's default generator (of the model's device): each request's draws are
    its own, and repeat."""
    draws = []
    device = model.musicgen.device

    def noise_from(tokens):
        draws.append(torch.rand(3, device=device))
        return torch.zeros(1, 1, SAMPLE_RATE)

    monkeypatch.setattr(model.mbd(), "tokens_to_wav", noise_from)
    request = GenerationRequest(prompt="x", duration=1, sampling=SAMPLING, multi_band_diffusion=True)
    torch.manual_seed(0)
    outside = torch.rand(3, device=device)
    torch.manual_seed(0)
    for seed in (5, 6, 5):
        generate(model, request, seed)
    assert torch.equal(torch.rand(3, device=device), outside)  # the global stream is left where it was
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def test_the_codec_serves_one_request_at_a_time_a_continuations_prompt_included(model, monkeypatch):
    """The memory kept for the codec is one encode or decode's: its encoder for a continuation's
    prompt and its decoder both run holding the codec's lock."""
    held = []
    musicgen = model.musicgen
    prepare, decode = musicgen._prepare_tokens_and_attributes, musicgen.generate_audio

    def preparing(descriptions, prompt, *melody):
        held.append(("encode", prompt is not None, model.codec_lock.locked()))
        return prepare(descriptions, prompt, *melody)

    def decoding(tokens):
        held.append(("decode", True, model.codec_lock.locked()))
        return decode(tokens)

    monkeypatch.setattr(musicgen, "_prepare_tokens_and_attributes", preparing)
    monkeypatch.setattr(musicgen, "generate_audio", decoding)
    generate(model, GenerationRequest(None, 1.0, SAMPLING, continue_from=clip(1.0)))
    assert held == [("encode", True, True), ("decode", True, True)]
