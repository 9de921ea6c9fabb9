"""Normalization strategies: audiocraft's numbers, checked on known signals, and silence-safe."""

import math

import numpy as np
import pyloudnorm
import pytest
import torch

from musicgen_cog.audio.choices import NORMALIZATION_STRATEGIES
from musicgen_cog.audio.normalization import db_to_gain, measure_loudness, normalize
from tests.helpers import SAMPLE_RATE, ffmpeg_loudness

MINUS_1_DBFS = 10 ** (-1 / 20)
MINUS_18_DBFS = 10 ** (-18 / 20)


def noise(level: float, seconds: float = 4.0, channels: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return level * torch.randn(channels, int(seconds * SAMPLE_RATE), generator=generator)


def test_peak_scales_the_peak_to_minus_1_dbfs():
    out = normalize(noise(0.01), SAMPLE_RATE, "peak")
    assert out.abs().max().item() == pytest.approx(MINUS_1_DBFS, rel=1e-5)


def test_clip_clamps_to_minus_1_dbfs_and_leaves_quiet_audio_alone():
    loud = noise(2.0)
    out = normalize(loud, SAMPLE_RATE, "clip")
    assert out.abs().max().item() == pytest.approx(MINUS_1_DBFS, rel=1e-6)
    quiet = noise(0.01)
    assert torch.equal(normalize(quiet, SAMPLE_RATE, "clip"), quiet)


def test_rms_scales_mono_rms_to_minus_18_dbfs():
    out = normalize(noise(0.5, channels=2), SAMPLE_RATE, "rms")
    mono_rms = out.mean(dim=0).pow(2).mean().sqrt().item()
    assert mono_rms == pytest.approx(MINUS_18_DBFS, rel=1e-3)


def test_loudness_reaches_minus_14_lufs_by_pyloudnorm():
    out = normalize(noise(0.02), SAMPLE_RATE, "loudness")
    assert measure_loudness(out, SAMPLE_RATE) == pytest.approx(-14.0, abs=0.1)


def test_loudness_reaches_minus_14_lufs_measured_by_ffmpeg(tmp_path):
    import soundfile

    out = normalize(noise(0.02), SAMPLE_RATE, "loudness")
    path = tmp_path / "n.wav"
    soundfile.write(path, out.T.numpy(), SAMPLE_RATE, subtype="FLOAT")
    assert ffmpeg_loudness(path) == pytest.approx(-14.0, abs=0.5)


def test_loudness_is_pyloudnorms_measure_in_double_precision_from_one_gating_block_on():
    """BS.1770's 400 ms gating block: a clip one block long is measured, a sample shorter is not."""
    block = int(0.4 * SAMPLE_RATE)
    clip = noise(0.1, seconds=0.4)
    assert clip.shape[-1] == block and clip.dtype == torch.float32
    expected = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(clip.double().numpy().T)
    assert measure_loudness(clip, SAMPLE_RATE) == expected and math.isfinite(expected)
    assert measure_loudness(clip[:, : block - 1], SAMPLE_RATE) == -math.inf


def test_loudness_leaves_audio_below_the_energy_floor_unchanged():
    faint = noise(1e-3)
    assert torch.equal(normalize(faint, SAMPLE_RATE, "loudness"), faint)


def test_loudness_and_rms_clamp_to_full_scale():
    spiky = noise(0.02)
    spiky[0, 100], spiky[0, 200] = 50.0, -50.0
    for strategy in ("loudness", "rms"):
        out = normalize(spiky, SAMPLE_RATE, strategy)
        assert out.max().item() == 1.0 and out.min().item() == -1.0


@pytest.mark.parametrize("strategy", NORMALIZATION_STRATEGIES)
def test_silence_stays_silence_without_nan(strategy):
    silence = torch.zeros(1, SAMPLE_RATE * 2)
    out = normalize(silence, SAMPLE_RATE, strategy)
    assert torch.isfinite(out).all() and out.abs().max().item() == 0.0


def test_non_finite_audio_is_an_error_not_a_silent_result():
    bad = noise(0.1)
    bad[0, 5] = math.nan
    with pytest.raises(ValueError, match=r"^cannot normalize audio that holds NaN or infinite samples$"):
        normalize(bad, SAMPLE_RATE, "peak")


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="one of loudness, clip, peak, rms"):
        normalize(noise(0.1), SAMPLE_RATE, "lufs")


def test_db_to_gain():
    assert db_to_gain(-20) == pytest.approx(0.1) and db_to_gain(0) == 1.0
    assert np.isneginf(measure_loudness(torch.zeros(1, 100), SAMPLE_RATE))
