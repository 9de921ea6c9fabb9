"""One prediction, start to finish: check inputs, decode audio, seed, generate, normalize, write."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ..audio.decoding import decode_audio, slice_audio
from ..audio.normalization import normalize
from ..audio.writing import OutputFolder
from ..model.decoding_loop import GenerationCancelled
from ..model.generation import GenerationRequest, generate
from ..model.loading import LoadedModel
from ..model.randomness import RequestRandomness
from ..model.sampling import Sampling
from .inputs import ModelLimits, PredictionInputs, validate
from .metrics import record_metrics
from .seeding import resolve_seed

log = logging.getLogger(__name__)


def limits_of(model: LoadedModel) -> ModelLimits:
    """What the loaded checkpoint can do, for the input checks that depend on it."""
    return ModelLimits(model.codebook_size, model.supports_melody, model.supports_mbd)


def run_prediction(
    model: LoadedModel, inputs: PredictionInputs, outputs: OutputFolder, cancelled: threading.Event | None = None
) -> Path:
    """Run `inputs` on `model` and return the path of the new audio file in `outputs`; stop
    (GenerationCancelled) once `cancelled` is set. Several may run at once, in threads."""
    started = time.monotonic()
    validate(inputs, limits_of(model))
    seed = resolve_seed(inputs.seed)
    log.info("Using seed %d", seed)
    health = model.health
    clip = None
    if inputs.input_audio is not None:
        with health.stage("decoding input_audio", "cpu"):
            clip = slice_audio(decode_audio(inputs.input_audio), inputs.continuation_start, inputs.slice_end)
    request = GenerationRequest(
        prompt=inputs.prompt,
        duration=float(inputs.duration),
        sampling=Sampling(inputs.top_k, inputs.top_p, inputs.temperature, float(inputs.classifier_free_guidance)),
        melody=clip if not inputs.continuation else None,
        continue_from=clip if inputs.continuation else None,
        multi_band_diffusion=inputs.multi_band_diffusion,
        cancelled=cancelled or threading.Event(),
    )
    wav = generate(model, request, RequestRandomness(seed, model.musicgen.device))
    sample_rate = model.musicgen.sample_rate
    log.info("normalizing (%s) and encoding %s", inputs.normalization_strategy, inputs.output_format)
    with health.stage("normalizing and writing the audio", "cpu"), request.times.measure("encoding"):
        wav = normalize(wav, sample_rate, inputs.normalization_strategy)
        if cancelled is not None and cancelled.is_set():
            raise GenerationCancelled()  # no file for a prediction nobody waits for
        path = outputs.write(wav, sample_rate, inputs.output_format, stem=f"musicgen-seed{seed}")
    audio_seconds = wav.shape[-1] / sample_rate
    log.info("wrote %s (%.2f s of audio) in %.1f s", path.name, audio_seconds, time.monotonic() - started)
    record_metrics(request.times, seed, audio_seconds, model.path.name)
    return path
