"""Input checks: the hosted order and wording, plus our range checks naming each input."""

from pathlib import Path

import pytest

from musicgen_cog.api.inputs import ModelLimits, PredictionInputs, validate
from musicgen_cog.errors import InputError
from tests.helpers import HOSTED_API

MELODY_MODEL = ModelLimits(codebook_size=2048, supports_melody=True, supports_mbd=True)
AUDIO = Path("clip.wav")


def error_of(limits=MELODY_MODEL, **fields) -> str:
    with pytest.raises(InputError) as caught:
        validate(PredictionInputs(**fields), limits)
    return str(caught.value)


def test_defaults_are_the_hosted_ones():
    inputs = PredictionInputs()
    for field in HOSTED_API["inputs"]:  # an input without a hosted default is optional: None
        assert getattr(inputs, field["name"]) == field.get("default"), field["name"]


def test_prompt_or_audio_is_required_with_the_hosted_message():
    assert error_of() == "Must provide either prompt or input_audio"
    assert error_of(prompt="   ") == "Must provide either prompt or input_audio"


def test_continuation_needs_audio_with_the_hosted_message():
    assert error_of(prompt="x", continuation=True) == "Must provide `input_audio` if continuation is `True`."


def test_slice_start_after_end_with_the_hosted_message():
    message = error_of(prompt="x", input_audio=AUDIO, continuation_start=5, continuation_end=2)
    assert message == "`continuation_start` must be less than or equal to `continuation_end`"
    validate(PredictionInputs(prompt="x", input_audio=AUDIO, continuation_start=5, continuation_end=5), MELODY_MODEL)


@pytest.mark.parametrize("end", [None, -1])
def test_end_of_minus_one_or_none_means_end_of_clip(end):
    inputs = PredictionInputs(prompt="x", input_audio=AUDIO, continuation_start=5, continuation_end=end)
    validate(inputs, MELODY_MODEL)
    assert inputs.slice_end is None


def test_melody_on_a_model_without_chroma_is_refused():
    text_only = ModelLimits(codebook_size=2048, supports_melody=False, supports_mbd=True)
    with pytest.raises(InputError) as caught:
        validate(PredictionInputs(prompt="x", input_audio=AUDIO), text_only)
    assert caught.value.input_name == "input_audio" and str(caught.value) == (
        "input_audio cannot be used as a melody: this model has no chroma (melody) conditioner. "
        "Set continuation to true to continue the audio instead."
    )
    validate(PredictionInputs(prompt="x", input_audio=AUDIO, continuation=True), text_only)


def test_mbd_on_a_stereo_model_is_refused():
    stereo = ModelLimits(codebook_size=2048, supports_melody=True, supports_mbd=False)
    assert error_of(stereo, prompt="x", multi_band_diffusion=True) == (
        "multi_band_diffusion only works with mono (4-codebook) models; this checkpoint is stereo. "
        "Set multi_band_diffusion to false."
    )
    validate(PredictionInputs(prompt="x"), stereo)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("prompt", "x" * 2001, "prompt is 2001 characters long; at most 2000 are accepted"),
        ("duration", 0, "duration must be between 1 and 300 seconds, got 0"),
        ("duration", -3, "duration must be between 1 and 300"),
        ("duration", 301, "duration must be between 1 and 300"),
        ("top_k", 2049, "top_k must be between 0 and the codebook size 2048, got 2049"),
        ("top_k", -1, "top_k must be between 0"),
        ("top_p", 1.5, "top_p must be between 0 and 1, got 1.5"),
        ("top_p", -0.1, "top_p must be between 0 and 1"),
        ("temperature", -1.0, "temperature must be 0 (greedy) or more"),
        ("temperature", float("inf"), "temperature must be 0 (greedy) or more"),
        ("classifier_free_guidance", -1, "classifier_free_guidance must be 0 or more"),
        ("continuation_start", -1, "continuation_start must be 0 or more seconds"),
        ("continuation_end", -2, "continuation_end must be -1 (end of clip) or 0 or more seconds"),
        ("normalization_strategy", "lufs", "normalization_strategy must be one of loudness, clip, peak, rms"),
        ("output_format", "ogg", "output_format must be one of wav, mp3"),
        ("seed", -2, "seed must be -1 or empty (random) or between 0 and 4294967295"),
        ("seed", 2**32, "seed must be -1 or empty (random)"),
    ],
)
def test_out_of_range_values_name_the_input_and_what_is_accepted(field, value, expected):
    fields = {"prompt": "x", field: value}
    assert error_of(**fields).startswith(expected)
    with pytest.raises(InputError) as caught:
        validate(PredictionInputs(**fields), MELODY_MODEL)
    assert caught.value.input_name == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("top_k", 0),
        ("top_k", 2048),
        ("top_p", 1.0),
        ("temperature", 0.0),
        ("classifier_free_guidance", 0),
        ("seed", 0),
        ("seed", -1),
        ("seed", 2**32 - 1),
        ("duration", 1),
        ("duration", 300),
        ("prompt", "x" * 2000),
    ],
)
def test_edge_values_that_are_accepted(field, value):
    validate(PredictionInputs(**{"prompt": "x", field: value}), MELODY_MODEL)
