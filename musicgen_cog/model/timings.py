"""Where one request's time went, stage by stage, for the metrics of its prediction.

Each stage adds its seconds as it ends (a request with several windows waits for a slot and
conditions several times); the decoding steps and their seconds come from the step counter.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

STAGES = ("slot_wait", "conditioning", "decoding", "audio_decoding", "mbd", "encoding")


class StageTimes:
    """Seconds per stage (STAGES) and the decoding steps of one request; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.steps = 0

    def add(self, stage: str, seconds: float) -> None:
        assert stage in STAGES, stage
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(stage, time.monotonic() - started)
