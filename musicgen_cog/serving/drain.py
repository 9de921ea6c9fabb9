"""The predictions in flight, and the drain: refuse new ones, let these finish, cut the rest.

coglet 0.23.1 keeps accepting predictions until it is told to stop, and then drops the
asynchronous ones still running without a terminal status. So the predictor itself refuses
new work once a drain starts, knows when the last prediction in flight has ended, and at the
deadline ends every prediction still running with an error its client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

DRAIN_ENV = "MUSICGEN_DRAIN_SECONDS"
# The longest prediction the limits allow (300 s of audio: 16 windows, 15,048 steps, then MBD and
# mp3) decodes in about 40 s at the GPU step target of 2.5 ms/step; its MBD is unmeasured on a GPU
# (on this project's 2-core CPU with tiny weights the whole took 634 s, 62 s of it decoding). 300 s
# bounds a rolling update's wait per pod; a drain ends as soon as the last prediction does.
DEFAULT_DRAIN_SECONDS = 300.0
# At the deadline a prediction stops at its next step boundary, or when its stage (conditioning,
# MBD) ends; one that has not stopped this much later is answered without waiting for its thread.
CUT_WAIT_SECONDS = 15.0
T = TypeVar("T")


class ShuttingDown(Exception):
    """The server is draining: a prediction it refused, or one it cut at the end of the grace period.

    Clients see `... ShuttingDown: <message>` as the prediction's error and should send it again.
    """


class StillRunning(Exception):
    """A cut prediction whose work had not stopped CUT_WAIT_SECONDS after the deadline."""


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
    """How a drain ended: predictions that finished within the grace period, those cut (and of
    these, those answered while their work still ran), and those refused meanwhile."""

    finished: int
    cut: int
    abandoned: int
    refused: int


class Admission:
    """One prediction in flight: the event that stops its work, and the drain's way to stop
    waiting for that work when it will not stop in time."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._given_up: asyncio.Future[None] = self._loop.create_future()

    async def outlast(self, work: Awaitable[T]) -> T:
        """`work`'s result, or StillRunning once the drain gives up waiting for it (the work goes
        on in the background until the process exits). Cancelling this cancels `work` first."""
        task = asyncio.ensure_future(work)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved if abandoned
        either: set[asyncio.Future[Any]] = {task, self._given_up}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        if task.done():
            return task.result()
        raise StillRunning()

    def give_up(self) -> None:
        """From any thread: make `outlast` return now."""
        self._loop.call_soon_threadsafe(self._give_up_now)

    def _give_up_now(self) -> None:
        if not self._given_up.done():
            self._given_up.set_result(None)


class InFlight:
    """Every prediction between admission and its end."""

    def __init__(self, on_change: Callable[[int], None] | None = None):
        self._changed = threading.Condition()
        self._running: set[Admission] = set()
        self._cut: set[Admission] = set()
        self._draining = False
        self._at_once = False
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
    def admit(self) -> Iterator[Admission]:
        """Run the block, in a coroutine, as a prediction in flight; raise ShuttingDown instead if
        a drain has begun, or if the drain cut this prediction at its deadline."""
        with self._changed:
            if self._draining:
                self._refused += 1
                raise ShuttingDown(REFUSED)
            admission = Admission()
            self._running.add(admission)
            self._on_change(len(self._running))
        try:
            yield admission
        except Exception as exc:
            if admission in self._cut:
                raise ShuttingDown(self._cut_message) from exc
            raise
        finally:
            with self._changed:
                self._running.discard(admission)
                self._on_change(len(self._running))
                self._changed.notify_all()

    def cut_now(self) -> None:
        """End the grace period now, of a drain under way or of one yet to begin: the predictions in
        flight are cut as at its deadline (a stop at once: SIGINT, or a second stop signal)."""
        with self._changed:
            self._at_once = True
            self._changed.notify_all()

    def drain(self, grace: float) -> DrainResult:
        """Refuse new predictions from now on, wait up to `grace` seconds (or until `cut_now`) for
        those in flight, then stop the rest (each fails with ShuttingDown), answering any that will
        not stop in time."""
        with self._changed:
            self._draining = True
            at_start = len(self._running)
            self._changed.wait_for(lambda: not self._running or self._at_once, timeout=grace)
            self._cut_message = (
                "this server shut down before the prediction finished: it was told to stop at once; send it again"
                if self._at_once
                else f"this server shut down before the prediction finished: it was still running "
                f"{grace:g} s after shutdown began ({DRAIN_ENV}); send it again"
            )
            self._cut = set(self._running)
            for admission in self._cut:
                admission.cancelled.set()
            self._changed.wait_for(lambda: not self._running, timeout=CUT_WAIT_SECONDS)
            abandoned = set(self._running)
            for admission in abandoned:
                admission.give_up()
            self._changed.wait_for(lambda: not self._running, timeout=CUT_WAIT_SECONDS)
            return DrainResult(at_start - len(self._cut), len(self._cut), len(abandoned), self._refused)
