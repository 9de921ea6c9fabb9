"""The four output normalization strategies, with audiocraft's `normalize_audio` numbers.

Differences from audiocraft, on purpose: silence passes through unchanged instead of
dividing by zero, and loudness is measured with pyloudnorm (ITU-R BS.1770-4), the
reference Python implementation, since torchaudio no longer ships its Loudness transform.
"""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import torch

from .choices import NORMALIZATION_STRATEGIES

PEAK_CLIP_HEADROOM_DB = 1.0  # peak and clip: -1 dBFS
RMS_HEADROOM_DB = 18.0  # rms: -18 dBFS
LOUDNESS_TARGET_LUFS = -14.0  # loudness: -14 LUFS
LOUDNESS_ENERGY_FLOOR = 2e-3  # below this RMS, loudness leaves the audio as it is


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def normalize(wav: torch.Tensor, sample_rate: int, strategy: str) -> torch.Tensor:
    """Return `wav` ([channels, samples], float) normalized by `strategy`; never NaN or inf."""
    if strategy not in NORMALIZATION_STRATEGIES:
        raise ValueError(f"normalization_strategy {strategy!r} is not one of {', '.join(NORMALIZATION_STRATEGIES)}")
    if not torch.isfinite(wav).all():
        raise ValueError("cannot normalize audio that holds NaN or infinite samples")
    peak_limit = db_to_gain(-PEAK_CLIP_HEADROOM_DB)
    if strategy == "clip":
        return wav.clamp(-peak_limit, peak_limit)
    if strategy == "peak":
        return _scale_to(wav, wav.abs().max().item(), peak_limit)
    if strategy == "rms":
        rms = wav.mean(dim=0).pow(2).mean().sqrt().item()
        return _scale_to(wav, rms, db_to_gain(-RMS_HEADROOM_DB)).clamp(-1, 1)
    return _normalize_loudness(wav, sample_rate).clamp(-1, 1)


def measure_loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """Integrated loudness in LUFS (BS.1770-4); -inf for audio too short or too quiet to gate."""
    samples = wav.detach().to(torch.float64).cpu().numpy().T  # pyloudnorm wants [samples, channels]
    meter = pyloudnorm.Meter(sample_rate)
    if samples.shape[0] < int(meter.block_size * sample_rate):
        return -math.inf
    return float(meter.integrated_loudness(samples))


def _scale_to(wav: torch.Tensor, level: float, target: float) -> torch.Tensor:
    return wav if level == 0.0 else wav * (target / level)


def _normalize_loudness(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    energy = wav.pow(2).mean().sqrt().item()
    if energy < LOUDNESS_ENERGY_FLOOR:
        return wav
    loudness = measure_loudness(wav, sample_rate)
    if not np.isfinite(loudness):
        return wav
    return wav * db_to_gain(LOUDNESS_TARGET_LUFS - loudness)
