"""The predictions in flight, and the drain: refuse new ones, let these finish, cut the rest.

coglet 0.23.1 keeps accepting predictions until it is told to stop, and then drops the
asynchronous ones still running without a terminal status. So the predictor itself refuses
new work once a drain starts and knows when the last prediction in flight has ended.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DRAIN_ENV = "MUSICGEN_DRAIN_SECONDS"
# The longest prediction the limits allow (300 s of audio: 16 windows, about 15,000 steps, then MBD
# and mp3) takes about 40 s at the GPU step target of 2.5 ms and about 3 minutes on this project's
# 2-core CPU with tiny weights; 300 s covers both with room, and a drain ends as soon as the last
# prediction does, so a generous bound costs nothing in the usual case.
DEFAULT_DRAIN_SECONDS = 300.0
CUT_WAIT_SECONDS = 15.0  # for a cut prediction to reach its next step boundary (or its stage's end)


class ShuttingDown(Exception):
    """The server is draining: a prediction it refused, or one it cut at the end of the grace period.

    Clients see `... ShuttingDown: <message>` as the prediction's error and should send it again.
    """


REFUSED = "this server is shutting down and did not start the prediction; send it again"


def drain_seconds() -> float:
    """The grace period for predictions in flight: MUSICGEN_DRAIN_SECONDS if set, else 300."""
    raw = os.environ.get(DRAIN_ENV, "").strip()
    if not raw:
        return DEFAULT_DRAIN_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects nan
        raise ValueError(f"{DRAIN_ENV} must be a number of seconds, 0 or more, got {raw!r}")
    return seconds


@dataclass(frozen=True)
class DrainResult:
    """How a drain ended: predictions that finished within the grace period, and those cut."""

    finished: int
    cut: int
    refused: int


class InFlight:
    """Every prediction between admission and its end, each with the event that stops it."""

    def __init__(self, on_change: Callable[[int], None] | None = None):
        self._changed = threading.Condition()
        self._running: set[threading.Event] = set()
        self._cut: set[threading.Event] = set()
        self._draining = False
        self._refused = 0
        self._cut_message = ""
        self._on_change = on_change or (lambda count: None)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def count(self) -> int:
        with self._changed:
            return len(self._running)

    @contextlib.contextmanager
    def admit(self, cancelled: threading.Event) -> Iterator[None]:
        """Run the block as a prediction in flight, stopped by `cancelled`; raise ShuttingDown
        instead if a drain has begun, or if the drain cut this prediction at its deadline."""
        with self._changed:
            if self._draining:
                self._refused += 1
                raise ShuttingDown(REFUSED)
            self._running.add(cancelled)
            self._on_change(len(self._running))
        try:
            yield
        except Exception as exc:
            if cancelled in self._cut:
                raise ShuttingDown(self._cut_message) from exc
            raise
        finally:
            with self._changed:
                self._running.discard(cancelled)
                self._on_change(len(self._running))
                self._changed.notify_all()

    def drain(self, grace: float) -> DrainResult:
        """Refuse new predictions from now on, wait up to `grace` seconds for those in flight,
        then stop the rest (each fails with ShuttingDown) and wait for them to end."""
        with self._changed:
            self._draining = True
            at_start = len(self._running)
            self._changed.wait_for(lambda: not self._running, timeout=grace)
            self._cut_message = (
                f"this server shut down before the prediction finished: it was still running "
                f"{grace:g} s after shutdown began ({DRAIN_ENV}); send it again"
            )
            self._cut = set(self._running)
            for cancelled in self._cut:
                cancelled.set()
            self._changed.wait_for(lambda: not self._running, timeout=CUT_WAIT_SECONDS)
            return DrainResult(finished=at_start - len(self._cut), cut=len(self._cut), refused=self._refused)
