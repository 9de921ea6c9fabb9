"""predict() end to end on tiny random weights: every input and mode of the hosted API.

Random weights make noise: these tests check shapes, durations, formats, numbers and
determinism, never musical quality.
"""

import numpy as np
import pytest
import torch
from audiocraft.data.audio_utils import convert_audio

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.audio.normalization import db_to_gain
from musicgen_cog.audio.writing import OutputFolder
from musicgen_cog.errors import InputError
from musicgen_cog.weights.random_weights import write_finetune
from tests.helpers import (
    DEFAULTS,
    SAMPLE_RATE,
    decoding_steps,
    ffmpeg_loudness,
    predict_now,
    read_audio,
    samples_per_frame,
    tone,
    write_tone,
)

WINDOWED = pytest.mark.slow  # generations past the 30 s window: many seconds each


def samples_of(path):
    samples, rate = read_audio(path)
    assert rate == SAMPLE_RATE
    assert np.isfinite(samples).all()
    return samples


# --- text mode and durations -------------------------------------------------------------------


@pytest.mark.parametrize("duration", [1, 8, pytest.param(31, marks=WINDOWED), pytest.param(45, marks=WINDOWED)])
def test_text_mode_gives_the_requested_duration_at_32_khz_mono(run, duration):
    samples = samples_of(run(duration=duration))
    assert samples.shape == (duration * SAMPLE_RATE, 1)


def test_text_mode_progress_and_seed_are_in_the_logs(run, predictor, logs):
    run(duration=2, seed=5)
    messages = [r.getMessage() for r in logs.records]
    assert "Using seed 5" in messages
    steps = decoding_steps(predictor.model.musicgen, 2)
    assert f"generation: {steps}/{steps} steps (100%)" in " ".join(messages)


@WINDOWED
def test_windowed_generation_reports_steps_over_all_windows(run, predictor, logs):
    run(duration=31)
    planned, decoded = final_progress(logs)
    assert planned == decoded and int(planned) > 31 * predictor.model.musicgen.frame_rate


# --- melody mode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, channels, rate",
    [
        (".wav", 1, 22050),
        (".wav", 2, 44100),
        (".mp3", 1, 48000),
        (".mp3", 2, 22050),
        (".flac", 1, 44100),
        (".flac", 2, 48000),
        (".ogg", 1, 48000),
        (".ogg", 2, 44100),
    ],
)
def test_melody_from_each_format_layout_and_rate(run, tmp_path, suffix, channels, rate):
    melody = write_tone(tmp_path / f"melody{suffix}", seconds=2.0, sample_rate=rate, channels=channels)
    assert samples_of(run(input_audio=melody, duration=1)).shape == (SAMPLE_RATE, 1)


def test_melody_without_prompt_is_accepted(run, tmp_path):
    melody = write_tone(tmp_path / "m.wav")
    assert samples_of(run(prompt=None, input_audio=melody, duration=1)).shape == (SAMPLE_RATE, 1)


@WINDOWED
def test_melody_beyond_the_window_loops_the_melody(run, tmp_path):
    melody = write_tone(tmp_path / "m.wav", seconds=3.0)
    assert samples_of(run(input_audio=melody, duration=31)).shape == (31 * SAMPLE_RATE, 1)


def test_melody_slice_is_what_conditions_generation(run, predictor, tmp_path, monkeypatch):
    import soundfile

    rate = 44100
    first, second = tone(2.0, rate, 1, 440.0), tone(2.0, rate, 1, 659.3)
    melody = tmp_path / "two_pitches.wav"  # A for 2 s, then E
    soundfile.write(melody, np.concatenate([first, second]), rate, subtype="FLOAT")
    musicgen = predictor.model.musicgen
    received = []
    original = musicgen._prepare_tokens_and_attributes

    def spy(descriptions, prompt, melody_wavs=None):
        received.append(melody_wavs[0].clone())
        return original(descriptions, prompt, melody_wavs)

    monkeypatch.setattr(musicgen, "_prepare_tokens_and_attributes", spy)
    run(input_audio=melody, duration=1, continuation_start=2)
    run(input_audio=melody, duration=1, continuation_end=2)
    late, early = received
    expected_late, expected_early = (
        convert_audio(torch.from_numpy(p).T, rate, SAMPLE_RATE, 1) for p in (second, first)
    )
    assert late.shape == early.shape == (1, 2 * SAMPLE_RATE)
    assert torch.equal(late, expected_late) and torch.equal(early, expected_early)


# --- continuation ------------------------------------------------------------------------------


@pytest.mark.parametrize("start, end, expected_prompt", [(0, None, 4), (0, -1, 4), (1, 3, 2), (2, None, 2), (0, 60, 4)])
def test_continuation_output_is_the_slice_then_duration_new_seconds(run, tmp_path, start, end, expected_prompt):
    audio = write_tone(tmp_path / "c.wav", seconds=4.0)
    out = samples_of(
        run(input_audio=audio, continuation=True, continuation_start=start, continuation_end=end, duration=2)
    )
    assert out.shape == ((expected_prompt + 2) * SAMPLE_RATE, 1)


@WINDOWED
def test_continuation_beyond_the_window_extends(run, tmp_path):
    audio = write_tone(tmp_path / "c.wav", seconds=3.0)
    out = samples_of(run(input_audio=audio, continuation=True, duration=31))
    assert out.shape == (34 * SAMPLE_RATE, 1)


def final_progress(logs) -> tuple[str, str]:
    """(planned total from the 100% line, steps actually decoded) of the last generation."""
    messages = [r.getMessage() for r in logs.records]
    planned = [m.split()[1].split("/")[1] for m in messages if m.startswith("generation:") and "(100%)" in m][-1]
    decoded = [m.split()[1] for m in messages if m.startswith("decoded ")][-1]
    return planned, decoded


@pytest.mark.parametrize("seconds, rate", [(2.5, 48000), (1.37, 44100), (3.0, 22050)])
def test_continuation_of_a_fractional_slice_keeps_its_length_and_exact_progress(
    run, predictor, tmp_path, logs, seconds, rate
):
    audio = write_tone(tmp_path / "c.wav", seconds=seconds, sample_rate=rate, channels=2)
    out = samples_of(run(input_audio=audio, continuation=True, duration=1))
    assert abs(out.shape[0] - int((seconds + 1) * SAMPLE_RATE)) <= samples_per_frame(predictor.model.musicgen)
    planned, decoded = final_progress(logs)
    assert planned == decoded


# --- MultiBand Diffusion -----------------------------------------------------------------------


def test_mbd_in_text_mode(run):
    assert samples_of(run(multi_band_diffusion=True, duration=2)).shape == (2 * SAMPLE_RATE, 1)


def test_mbd_in_melody_mode(run, tmp_path):
    out = run(multi_band_diffusion=True, input_audio=write_tone(tmp_path / "m.wav"), duration=1)
    assert samples_of(out).shape == (SAMPLE_RATE, 1)


def test_mbd_in_continuation_resynthesises_the_whole_output(run, tmp_path):
    audio = write_tone(tmp_path / "c.wav", seconds=2.0)
    plain = samples_of(run(input_audio=audio, continuation=True, duration=1, normalization_strategy="clip"))
    mbd = samples_of(
        run(input_audio=audio, continuation=True, duration=1, normalization_strategy="clip", multi_band_diffusion=True)
    )
    assert mbd.shape == plain.shape == (3 * SAMPLE_RATE, 1)
    prompt_part = slice(0, 2 * SAMPLE_RATE)
    assert not np.allclose(mbd[prompt_part], plain[prompt_part])


# --- normalization, numerically, on the written file -------------------------------------------


def test_loudness_output_is_minus_14_lufs_by_ffmpeg(run):
    assert ffmpeg_loudness(run(duration=8, normalization_strategy="loudness")) == pytest.approx(-14.0, abs=0.5)


def test_peak_output_peaks_at_minus_1_dbfs(run):
    peak = np.abs(samples_of(run(duration=2, normalization_strategy="peak"))).max()
    assert peak == pytest.approx(db_to_gain(-1), abs=2 / 2**15)


def test_rms_output_has_minus_18_dbfs_rms(run):
    samples = samples_of(run(duration=2, normalization_strategy="rms"))
    assert np.sqrt(np.mean(samples[:, 0] ** 2)) == pytest.approx(db_to_gain(-18), rel=0.01)


def test_clip_output_never_exceeds_minus_1_dbfs(run):
    assert np.abs(samples_of(run(duration=2, normalization_strategy="clip"))).max() <= db_to_gain(-1) + 1 / 2**15


# --- output formats ----------------------------------------------------------------------------


def test_wav_output_is_16_bit_pcm(run):
    import soundfile

    info = soundfile.info(run(duration=1))
    assert (info.format, info.subtype, info.samplerate) == ("WAV", "PCM_16", SAMPLE_RATE)


@pytest.mark.parametrize("duration", [1, 8])
def test_mp3_output_decodes_to_the_duration_within_one_frame(run, duration):
    path = run(duration=duration, output_format="mp3")
    assert path.suffix == ".mp3"
    assert abs(samples_of(path).shape[0] - duration * SAMPLE_RATE) <= 1152


def test_each_prediction_writes_a_new_file(run):
    assert len({run(seed=3).name for _ in range(3)}) == 3


# --- seeds and determinism ---------------------------------------------------------------------


def test_the_same_seed_gives_identical_samples(run):
    assert np.array_equal(samples_of(run(seed=11, duration=2)), samples_of(run(seed=11, duration=2)))


def test_different_seeds_give_different_samples(run):
    assert not np.array_equal(samples_of(run(seed=11, duration=2)), samples_of(run(seed=12, duration=2)))


def test_seed_zero_is_a_real_seed(run, logs):
    first, second = samples_of(run(seed=0, duration=2)), samples_of(run(seed=0, duration=2))
    assert np.array_equal(first, second)
    assert "Using seed 0" in [r.getMessage() for r in logs.records]


@pytest.mark.parametrize("seed", [None, -1])
def test_a_random_seed_is_logged_and_reproduces_the_output(run, logs, seed):
    first = samples_of(run(seed=seed, duration=2))
    used = [int(r.getMessage().split()[-1]) for r in logs.records if r.getMessage().startswith("Using seed")][-1]
    assert np.array_equal(first, samples_of(run(seed=used, duration=2)))


def test_nothing_leaks_from_one_request_into_the_next(run, tmp_path):
    reference = samples_of(run(seed=21, duration=2))
    run(
        seed=4,
        duration=3,
        top_k=0,
        top_p=0.9,
        temperature=0.0,
        classifier_free_guidance=7,
        multi_band_diffusion=True,
        output_format="mp3",
        input_audio=write_tone(tmp_path / "m.wav"),
    )
    assert np.array_equal(samples_of(run(seed=21, duration=2)), reference)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(top_p=0.9), dict(top_k=1), dict(top_k=0)])
def test_every_sampling_rule_runs_and_is_deterministic(run, sampling):
    assert np.array_equal(samples_of(run(seed=2, **sampling)), samples_of(run(seed=2, **sampling)))


# --- errors, as a user sees them ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(prompt=None), "Must provide either prompt or input_audio"),
        (dict(continuation=True), "Must provide `input_audio` if continuation is `True`."),
        (dict(top_k=2049), "top_k must be between 0 and the codebook size 2048, got 2049"),
        (dict(duration=0), "duration must be between 1 and 300 seconds, got 0"),
    ],
)
def test_documented_errors(run, overrides, message):
    with pytest.raises(InputError) as caught:
        run(**overrides)
    assert str(caught.value) == message


def test_slice_start_after_end_is_the_hosted_error(run, tmp_path):
    with pytest.raises(InputError, match=r"^`continuation_start` must be less than or equal to `continuation_end`$"):
        run(input_audio=write_tone(tmp_path / "m.wav"), continuation_start=2, continuation_end=1)


def test_slice_start_past_the_clip_is_an_error(run, tmp_path):
    with pytest.raises(InputError, match="continuation_start is 5 s, past the end of input_audio"):
        run(input_audio=write_tone(tmp_path / "m.wav"), continuation=True, continuation_start=5)


def test_audio_that_is_not_audio_is_an_error(run, tmp_path):
    fake = tmp_path / "fake.mp3"
    fake.write_text("not audio")
    with pytest.raises(InputError, match=r"^input_audio could not be decoded"):
        run(input_audio=fake)


@pytest.fixture(scope="module")
def other_predictor(tiny_weights, tmp_path_factory):
    """Build a Predictor on another fine-tune file (COG_WEIGHTS as a path)."""
    import predict

    def build(**variant):
        path = write_finetune(tmp_path_factory.mktemp("finetune") / "trained_model.tar", **variant)
        instance = predict.Predictor()
        instance.setup(weights=str(path))
        instance.outputs = OutputFolder(tmp_path_factory.mktemp("outputs"))
        return instance

    return build


def test_melody_on_a_text_only_model_is_refused(other_predictor, tmp_path):
    predictor = other_predictor(melody=False)
    with pytest.raises(InputError, match="input_audio cannot be used as a melody: this model has no chroma"):
        predict_now(predictor, **{**DEFAULTS, "input_audio": write_tone(tmp_path / "m.wav")})
    out = predict_now(predictor, **{**DEFAULTS, "input_audio": write_tone(tmp_path / "m.wav"), "continuation": True})
    assert samples_of(out).shape == (3 * SAMPLE_RATE, 1)


def test_mbd_on_a_stereo_model_is_refused_and_stereo_output_works(other_predictor):
    predictor = other_predictor(stereo=True)
    with pytest.raises(InputError, match="multi_band_diffusion only works with mono"):
        predict_now(predictor, **{**DEFAULTS, "multi_band_diffusion": True})
    assert samples_of(predict_now(predictor, **DEFAULTS)).shape == (SAMPLE_RATE, 2)


def test_setup_fixes_the_heap_threshold_and_every_prediction_trims_even_a_failed_one(
    tiny_weights, tmp_path, monkeypatch
):
    """The memory settings the soak depends on (musicgen_cog/api/memory.py) are really wired in."""
    import predict

    calls = []
    monkeypatch.setattr(predict, "fix_mmap_threshold", lambda: calls.append("fix threshold"))
    monkeypatch.setattr(predict, "release_freed_memory", lambda: calls.append("trim"))
    instance = predict.Predictor()
    instance.setup(weights=None)
    instance.outputs = OutputFolder(tmp_path)
    predict_now(instance, **DEFAULTS)
    with pytest.raises(InputError):
        predict_now(instance, **{**DEFAULTS, "top_k": 5000})
    assert calls == ["fix threshold", "trim", "trim"]


def test_predict_serves_the_default_concurrency_with_a_slot_each(predictor):
    import predict

    assert predict.Predictor.predict.__cog_concurrent_max__ == DEFAULT_CONCURRENCY == predict.MAX_CONCURRENCY
    assert predictor.model.loop.slots == DEFAULT_CONCURRENCY
