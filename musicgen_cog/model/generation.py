"""One generation: text, melody or continuation, decoded by EnCodec or MultiBand Diffusion.

Beyond the model's 30 s window audiocraft extends in windows (each prompted with the last
12 s of tokens, the melody looped); every mode goes through that same mechanism.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..audio.decoding import Audio
from ..errors import InputError
from .loading import LoadedModel
from .progress import StepProgress, planned_steps

log = logging.getLogger(__name__)
EXTEND_STRIDE = 18.0  # audiocraft's default: each extra window keeps 12 s of context


@dataclass(frozen=True)
class Sampling:
    top_k: int
    top_p: float
    temperature: float
    cfg_coef: float


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None
    duration: float  # seconds of new audio
    sampling: Sampling
    melody: Audio | None = None  # chroma condition (melody mode)
    continue_from: Audio | None = None  # audio prompt (continuation mode)
    multi_band_diffusion: bool = False


def generate(model: LoadedModel, request: GenerationRequest) -> torch.Tensor:
    """Generate audio [channels, samples] at `model.musicgen.sample_rate` for `request`."""
    musicgen = model.musicgen
    total = request.duration
    prompt_frames = 0
    if request.continue_from is not None:
        _check_continuation_prompt(request.continue_from, musicgen.max_duration)
        total += request.continue_from.seconds
        prompt_frames = _encoded_frames(request.continue_from, musicgen.sample_rate, musicgen.frame_rate)
    musicgen.set_generation_params(
        use_sampling=True,
        top_k=request.sampling.top_k,
        top_p=request.sampling.top_p,
        temperature=request.sampling.temperature,
        duration=total,
        cfg_coef=request.sampling.cfg_coef,
        two_step_cfg=False,
        extend_stride=EXTEND_STRIDE,
    )
    progress = StepProgress(planned_steps(musicgen, total, prompt_frames))
    musicgen.set_custom_progress_callback(progress)
    descriptions: list[Any] = [request.prompt]  # audiocraft conditions on no text for None
    try:
        if request.continue_from is not None:
            log.info(
                "generating %.2f s continuing %.2f s of input_audio", request.duration, request.continue_from.seconds
            )
            wav, tokens = musicgen.generate_continuation(
                request.continue_from.samples[None],
                request.continue_from.sample_rate,
                descriptions,
                progress=True,
                return_tokens=True,
            )
        elif request.melody is not None:
            melody = _melody_used(request.melody, total, musicgen.max_duration)
            log.info("separating melody stems (htdemucs) and generating %.2f s", total)
            wav, tokens = musicgen.generate_with_chroma(
                descriptions, melody.samples[None], melody.sample_rate, progress=True, return_tokens=True
            )
        else:
            log.info("generating %.2f s from text", total)
            wav, tokens = musicgen.generate(descriptions, progress=True, return_tokens=True)
    finally:
        musicgen.set_custom_progress_callback(None)
    progress.finish()
    if request.multi_band_diffusion:
        log.info("decoding %d frames with MultiBand Diffusion", tokens.shape[-1])
        wav = model.mbd().tokens_to_wav(tokens)
    wav = wav[0].float().cpu()
    if not torch.isfinite(wav).all():
        raise RuntimeError("the model produced NaN or infinite samples; try again with another seed")
    return wav


def _melody_used(melody: Audio, total: float, window: float) -> Audio:
    """The part of `melody` that can condition `total` seconds: one window, or every window's reach.

    With the checkpoint's `match_len_on_eval: false` audiocraft prepends chroma for the whole
    melody, so a 10-minute file would add ~4,700 prefix tokens to every step; melodies up to
    one window long are passed whole, as the hosted model does.
    """
    keep = int((window if total <= window else total + window) * melody.sample_rate)
    return melody if melody.samples.shape[-1] <= keep else Audio(melody.samples[:, :keep], melody.sample_rate)


def _check_continuation_prompt(audio: Audio, window: float) -> None:
    longest = window - 1
    if audio.seconds > longest:
        raise InputError(
            "input_audio",
            f"slice for continuation is {audio.seconds:.2f} s; it must be at most "
            f"{longest:g} s so the model's {window:g} s window has room to continue it. "
            "Use continuation_start and continuation_end to choose a shorter part.",
        )


def _encoded_frames(audio: Audio, model_rate: int, frame_rate: float) -> int:
    samples = round(audio.samples.shape[-1] * model_rate / audio.sample_rate)
    return -(-samples * int(frame_rate) // model_rate)
