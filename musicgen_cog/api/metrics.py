"""The figures each prediction reports beside Cog's `predict_time`, as Replicate's page shows them.

Seconds per stage (waiting for a slot, conditioning, decoding tokens, decoding the audio with
EnCodec or MultiBand Diffusion, encoding the file), the decoding steps and their rate, the
seconds of audio made, the seed used, and the decoding path the server proved at setup.
"""

from __future__ import annotations

from typing import Any

from cog import current_scope

from ..model.timings import StageTimes

METRIC_NAMES = {  # stage -> metric
    "slot_wait": "slot_wait_time",
    "conditioning": "conditioning_time",
    "decoding": "decoding_time",
    "audio_decoding": "audio_decoding_time",
    "mbd": "mbd_time",
    "encoding": "encoding_time",
}


def record_metrics(times: StageTimes, seed: int, audio_seconds: float, decoding_path: str) -> None:
    """Add this prediction's figures to its response's `metrics` (a no-op outside a prediction)."""
    scope: Any = current_scope()  # cog types it `object`; it has record_metric
    for stage, name in METRIC_NAMES.items():
        if stage in times.seconds:
            scope.record_metric(name, round(times.seconds[stage], 4))
    decoding = times.seconds.get("decoding", 0.0)
    scope.record_metric("decoding_steps", times.steps)
    scope.record_metric("steps_per_second", round(times.steps / decoding, 2) if decoding else 0.0)
    scope.record_metric("audio_seconds", round(audio_seconds, 3))
    scope.record_metric("seed", seed)
    scope.record_metric("decoding_path", decoding_path)
