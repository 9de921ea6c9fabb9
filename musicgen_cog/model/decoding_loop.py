"""One decoding loop shared by every request in flight (continuous batching).

Requests hand in one window at a time (conditions computed, pattern sequence built) and wait.
The loop's thread admits a window into a free slot at the next step boundary (its prefix runs
audiocraft's forward), then every step decodes one token for every admitted window, each with
its own sampling parameters and random generator (`steps.py`: slot by slot, or all at once);
a window leaves when its last token is written, when its request is cancelled, or when it
fails (alone: the others go on). Other work for the loop's thread (warm-up) goes through `call`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from .fast_decode import SlotDecoder
from .steps import Steps
from .window import Window

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """The request was cancelled; its window left the batch."""


class _Call:
    def __init__(self, work: Callable[[], Any]):
        self.work = work
        self.done: Future = Future()


class DecodingLoop:
    """Runs `steps` over the windows handed to `submit`, on a thread of its own."""

    def __init__(self, steps: Steps, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.steps = steps
        self.autocast = autocast  # a fresh autocast context per use: autocast state is per thread
        self._incoming: queue.SimpleQueue[Window | _Call | None] = queue.SimpleQueue()  # None: close
        self._waiting: list[Window] = []
        self._active: list[Window] = []
        self._free_slots = list(range(steps.decoder.slots))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decoding-loop", daemon=True)
        self._thread.start()

    @property
    def decoder(self) -> SlotDecoder:
        return self.steps.decoder

    @property
    def slots(self) -> int:
        return self.steps.decoder.slots

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, window: Window) -> Future:
        """Queue `window`; the future gives its filled sequence, or the reason it failed."""
        self._put(window)
        return window.done

    def call(self, work: Callable[[], Any]) -> Future:
        """Run `work` on the loop's thread between two steps (under the model's autocast)."""
        call = _Call(work)
        self._put(call)
        return call.done

    def close(self) -> None:
        """Stop the loop's thread (windows still in it fail) and free the cache."""
        self._incoming.put(None)
        self._thread.join()

    def _put(self, item: Window | _Call) -> None:
        if self._closed or not self.alive:
            raise RuntimeError("the decoding loop is closed")
        self._incoming.put(item)

    def _run(self) -> None:
        with torch.no_grad():
            while not self._closed:
                try:
                    self._take_incoming(block=not self._active and not self._waiting)
                    self._drop_cancelled()
                    self._admit()
                    if self._active:
                        with self.autocast():
                            self._step()
                except Exception as exc:  # a fault of the loop itself: fail what it holds, never hang a request
                    log.exception("the decoding loop failed")
                    for window in self._active + self._waiting:
                        self._leave(window, exc)
        for window in self._active + self._waiting:
            self._leave(window, RuntimeError("the decoding loop was closed"))
        self.steps.release()

    def _take_incoming(self, block: bool) -> None:
        taken = [self._incoming.get()] if block else []
        while True:
            try:
                taken.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        self._closed = None in taken
        for item in taken:
            if isinstance(item, Window):
                self._waiting.append(item)
            elif isinstance(item, _Call):
                self._perform(item)

    def _perform(self, call: _Call) -> None:
        try:
            with self.autocast():
                call.done.set_result(call.work())
        except Exception as exc:
            call.done.set_exception(exc)

    def _drop_cancelled(self) -> None:
        for window in [w for w in self._waiting + self._active if w.cancelled.is_set()]:
            self._leave(window, GenerationCancelled())

    def _leave(self, window: Window, error: BaseException | None = None) -> None:
        held = window in self._active
        if window in self._waiting:
            self._waiting.remove(window)
        if error is None:
            window.done.set_result(self.steps.result(window))
        else:
            window.done.set_exception(error)
        if held:  # its slot is free before it leaves the active windows: whoever sees it gone sees the slot free
            self.steps.vacate(window)
            self._free_slots.append(window.slot)
            self._active.remove(window)

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            window = self._waiting.pop(0)
            window.slot = min(self._free_slots)  # the lowest: a batched step runs only up to the highest in use
            self._free_slots.remove(window.slot)
            self._active.append(window)
            try:
                with self.autocast():  # sampling too: audiocraft samples under autocast
                    self.steps.admit(window)
            except Exception as exc:  # this request's prefix or numbers: it fails alone
                log.exception("a request failed while joining the batch")
                self._leave(window, exc)
                continue
            if window.finished:
                self._leave(window)

    def _step(self) -> None:
        try:
            failed = self.steps.step(list(self._active))
        except Exception as exc:  # the shared step itself: every window in it has failed
            log.exception("a decoding step failed")
            for window in list(self._active):
                self._leave(window, exc)
            return
        for window, error in failed.items():
            log.error("a request failed while sampling", exc_info=error)
            self._leave(window, error)
        for window in [w for w in self._active if w.finished]:
            self._leave(window)
