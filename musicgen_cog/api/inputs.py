"""The 14 inputs of the hosted API, their defaults, and every check made on them.

The hosted model's own messages are kept word for word for its four checks; every other
rejection names the input, says what was wrong and what would be accepted. This module
imports no ML library: checking a request costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..audio.choices import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS
from ..errors import InputError

MAX_DURATION = 300  # seconds of new audio per request (windowed beyond the model's 30 s)
MAX_PROMPT_CHARACTERS = 2000  # T5 was trained on short texts and audiocraft does not truncate them
SEED_RANGE = (0, 2**32 - 1)  # the hosted model's range (it seeds numpy, which accepts no more)


@dataclass(frozen=True)
class PredictionInputs:
    """One request, as the hosted schema names and defaults it."""

    prompt: str | None = None
    input_audio: Path | None = None
    duration: int = 8
    continuation: bool = False
    continuation_start: int = 0
    continuation_end: int | None = None
    multi_band_diffusion: bool = False
    normalization_strategy: str = "loudness"
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    classifier_free_guidance: int = 3
    output_format: str = "wav"
    seed: int | None = None

    @property
    def slice_end(self) -> int | None:
        """`continuation_end` with -1 read as "end of clip" (None)."""
        return None if self.continuation_end in (None, -1) else self.continuation_end


@dataclass(frozen=True)
class ModelLimits:
    """What the loaded checkpoint can do, for the checks that depend on it."""

    codebook_size: int
    supports_melody: bool
    supports_mbd: bool


def validate(inputs: PredictionInputs, limits: ModelLimits) -> None:
    """Raise InputError for the first problem found, checking in the hosted order."""
    has_prompt = inputs.prompt is not None and inputs.prompt.strip() != ""
    if not has_prompt and inputs.input_audio is None:
        raise InputError(None, "Must provide either prompt or input_audio")
    if inputs.continuation and inputs.input_audio is None:
        raise InputError(None, "Must provide `input_audio` if continuation is `True`.")
    _check_ranges(inputs, limits)
    if inputs.slice_end is not None and inputs.continuation_start > inputs.slice_end:
        raise InputError(None, "`continuation_start` must be less than or equal to `continuation_end`")
    if inputs.input_audio is not None and not inputs.continuation and not limits.supports_melody:
        raise InputError(
            "input_audio",
            "cannot be used as a melody: this model has no chroma (melody) "
            "conditioner. Set continuation to true to continue the audio instead.",
        )
    if inputs.multi_band_diffusion and not limits.supports_mbd:
        raise InputError(
            "multi_band_diffusion",
            "only works with mono (4-codebook) models; this checkpoint is stereo. Set multi_band_diffusion to false.",
        )


def _check_ranges(inputs: PredictionInputs, limits: ModelLimits) -> None:
    _require(
        inputs.prompt is None or len(inputs.prompt) <= MAX_PROMPT_CHARACTERS,
        "prompt",
        f"is {len(inputs.prompt or '')} characters long; at most {MAX_PROMPT_CHARACTERS} are accepted",
    )
    _require(
        1 <= inputs.duration <= MAX_DURATION,
        "duration",
        f"must be between 1 and {MAX_DURATION} seconds, got {inputs.duration}",
    )
    _require(
        inputs.continuation_start >= 0,
        "continuation_start",
        f"must be 0 or more seconds, got {inputs.continuation_start}",
    )
    _require(
        inputs.continuation_end is None or inputs.continuation_end >= -1,
        "continuation_end",
        f"must be -1 (end of clip) or 0 or more seconds, got {inputs.continuation_end}",
    )
    _require(
        0 <= inputs.top_k <= limits.codebook_size,
        "top_k",
        f"must be between 0 and the codebook size {limits.codebook_size}, got {inputs.top_k}",
    )
    _require(0.0 <= inputs.top_p <= 1.0, "top_p", f"must be between 0 and 1, got {inputs.top_p}")
    _require(
        0.0 <= inputs.temperature < float("inf"), "temperature", f"must be 0 (greedy) or more, got {inputs.temperature}"
    )
    _require(
        inputs.classifier_free_guidance >= 0,
        "classifier_free_guidance",
        f"must be 0 or more, got {inputs.classifier_free_guidance}",
    )
    _require(
        inputs.normalization_strategy in NORMALIZATION_STRATEGIES,
        "normalization_strategy",
        f"must be one of {', '.join(NORMALIZATION_STRATEGIES)}, got {inputs.normalization_strategy!r}",
    )
    _require(
        inputs.output_format in OUTPUT_FORMATS,
        "output_format",
        f"must be one of {', '.join(OUTPUT_FORMATS)}, got {inputs.output_format!r}",
    )
    _require(
        inputs.seed is None or inputs.seed == -1 or SEED_RANGE[0] <= inputs.seed <= SEED_RANGE[1],
        "seed",
        f"must be -1 or empty (random) or between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {inputs.seed}",
    )


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise InputError(name, message)
