"""One decoding loop shared by every request in flight (continuous batching).

Requests hand in one window at a time (conditions computed, pattern sequence built) and wait.
The loop's thread admits a window into a free slot at the next step boundary (its prefix runs
audiocraft's forward), then every step decodes one token for every admitted window, each with
its own sampling parameters and random generator (`steps.py`: slot by slot, or all at once);
a window leaves when its last token is written, when its request is cancelled, or when it
fails (alone: the others go on). Other work for the loop's thread (warm-up) goes through `call`.

On a GPU the loop's work runs on its own stream (`streams.py`): it waits for the event a request
recorded after writing its window, and records one after writing a finished window's result.
A step that runs out of memory is tried once more before its windows fail; a sticky device
error stops the loop, fails every request, and leaves `DeviceHealth` failed. Captures the step
still lacks (one that ran out of memory) are tried only when no window decodes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from .fast_decode import SlotDecoder
from .faults import DeviceHealth, is_out_of_memory, is_sticky, out_of_memory, release_cached_memory
from .steps import Steps
from .streams import NoStreams
from .window import Window

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """The request was cancelled; its window left the batch."""


class _Call:
    def __init__(self, work: Callable[[], Any], when_idle: bool):
        self.work = work
        self.when_idle = when_idle  # only when no window decodes (a capture)
        self.done: Future = Future()


class DecodingLoop:
    """Runs `steps` over the windows handed to `submit`, on a thread of its own."""

    def __init__(
        self,
        steps: Steps,
        autocast: Callable[[], contextlib.AbstractContextManager],
        streams: NoStreams | None = None,
        health: DeviceHealth | None = None,
    ):
        self.steps = steps
        self.autocast = autocast  # a fresh autocast context per use: autocast state is per thread
        self.streams = streams or NoStreams()
        self.health = health or DeviceHealth()
        self._device = next(steps.decoder.lm.parameters()).device.type
        self._incoming: queue.SimpleQueue[Window | _Call | None] = queue.SimpleQueue()  # None: close
        self._waiting: list[Window] = []
        self._active: list[Window] = []
        self._idle_calls: list[_Call] = []
        self._free_slots = list(range(steps.decoder.slots))
        self._closed = False
        self._closing = threading.Lock()  # what passed the closed check is queued before the last sweep
        self.last_progress = time.monotonic()  # when a step or an admission last finished
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

    def stalled_for(self) -> float:
        """Seconds since the loop last made progress while windows wait on it (0 when idle)."""
        waited_on = self._active or self._waiting or not self._incoming.empty()
        return time.monotonic() - self.last_progress if waited_on else 0.0

    def submit(self, window: Window) -> Future:
        """Queue `window`; the future gives its filled sequence, or the reason it failed."""
        self._put(window)
        return window.done

    def call(self, work: Callable[[], Any], when_idle: bool = False) -> Future:
        """Run `work` on the loop's thread (under the model's autocast) between two steps, or,
        `when_idle`, once no window decodes (windows that come meanwhile wait for it)."""
        call = _Call(work, when_idle)
        self._put(call)
        return call.done

    def close(self) -> None:
        """Stop the loop's thread (windows still in it fail) and free the cache."""
        self._incoming.put(None)
        self._thread.join()

    def _put(self, item: Window | _Call) -> None:
        if not self.health.ok:
            raise self.health.error()
        with self._closing:
            if self._closed or not self.alive:
                raise RuntimeError("the decoding loop is closed")
            self._incoming.put(item)

    def _run(self) -> None:
        with torch.no_grad(), self.streams.loop():
            while not self._closed:
                if self.health.failure is not None:  # another stage met a sticky error: the device is gone
                    self._device_failed(self.health.failure)
                    break
                try:
                    idle = not self._active
                    if idle:  # nothing decodes: work that synchronises the device delays no one
                        for call in self._idle_calls:
                            self._perform(call)
                        self._idle_calls.clear()
                        with self.autocast():  # as the steps run: graphs keep the autocast they were captured with
                            self.steps.capture_pending()
                    self._take_incoming(block=idle and not self._waiting)
                    if idle:  # nobody waited on the loop until now: a stall is counted from here
                        self.last_progress = time.monotonic()
                    self._drop_cancelled()
                    if not self._idle_calls:
                        self._admit()
                    if self._active:
                        with self.autocast():
                            self._step()
                except Exception as exc:  # a fault of the loop itself: fail what it holds, never hang a request
                    if is_sticky(exc, self._device):
                        self._device_failed(exc)
                        break
                    log.exception("the decoding loop failed")
                    for window in self._active + self._waiting:
                        self._leave(window, exc)
        with self._closing:
            self._closed = True  # refuse what comes from now on; answer what came
        reason = self.health.error() if not self.health.ok else RuntimeError("the decoding loop was closed")
        self._take_incoming(block=False, perform=False)
        for window in self._active + self._waiting:
            self._leave(window, reason)
        for call in self._idle_calls:
            call.done.set_exception(reason)
        self.steps.release()

    def _device_failed(self, exc: BaseException) -> None:
        """A sticky error: every window fails with it (the caller then stops the loop)."""
        failure = self.health.failed(exc)
        for window in self._active + self._waiting:
            self._leave(window, failure)

    def _take_incoming(self, block: bool, perform: bool = True) -> None:
        """Take what was handed in: windows wait for a slot, calls run (or, `when_idle`, wait for
        the loop to be idle; without `perform`, every call waits)."""
        taken = [self._incoming.get()] if block else []
        while True:
            try:
                taken.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        self._closed = self._closed or None in taken
        for item in taken:
            if isinstance(item, Window):
                self._waiting.append(item)
            elif isinstance(item, _Call) and (item.when_idle or not perform):
                self._idle_calls.append(item)
            elif isinstance(item, _Call):
                self._perform(item)

    def _perform(self, call: _Call) -> None:
        """Run a call; its error goes to its caller (a sticky one also to `health`, which stops the loop)."""
        try:
            with self.autocast():
                call.done.set_result(call.work())
        except Exception as exc:
            call.done.set_exception(exc)
            if is_sticky(exc, self._device):
                self.health.failed(exc)

    def _drop_cancelled(self) -> None:
        for window in [w for w in self._waiting + self._active if w.cancelled.is_set()]:
            self._leave(window, GenerationCancelled())

    def _leave(self, window: Window, error: BaseException | None = None) -> None:
        """`window` leaves the loop with its result, or `error`. Its slot is free before its
        request hears of it, and before it leaves the active windows: whoever sees it gone sees
        the slot free."""
        result = None
        if error is None:
            try:
                result = self.steps.result(window)
            except Exception as exc:  # its copy out of the slot: it fails alone
                if not is_out_of_memory(exc):
                    raise
                release_cached_memory(self._device)
                error = out_of_memory("handing back its tokens", self._device)
            window.result_ready = self.streams.mark()  # the request's stream waits for this before reading
        if window in self._active:
            self.steps.vacate(window)
            self._free_slots.append(window.slot)
            self._active.remove(window)
        elif window in self._waiting:
            self._waiting.remove(window)
        if error is None:
            window.done.set_result(result)
        else:
            window.done.set_exception(error)

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            window = self._waiting.pop(0)
            window.slot = min(self._free_slots)  # the lowest: requests fill the slots from the first
            window.admitted_at = time.monotonic()
            self._free_slots.remove(window.slot)
            self._active.append(window)
            self.streams.wait(window.tensors_ready)  # the request's stream has written the window's tensors
            self.streams.keep_alive(window.tensors())
            try:
                with self.autocast():  # sampling too: audiocraft samples under autocast
                    self.steps.admit(window)
            except Exception as exc:  # this request's prefix or numbers: it fails alone
                if is_sticky(exc, self._device):
                    raise
                if is_out_of_memory(exc):
                    release_cached_memory(self._device)
                    exc = out_of_memory("joining the batch (the prefill of its conditions)", self._device)
                log.error("a request failed while joining the batch: %s", exc)
                self._leave(window, exc)
                continue
            self.last_progress = time.monotonic()
            if window.finished:
                self._leave(window)

    def _step(self) -> None:
        windows = list(self._active)
        try:
            failed = self._step_once(windows)
        except Exception as exc:  # the shared step itself: every window in it has failed
            if is_sticky(exc, self._device):
                raise
            log.exception("a decoding step failed")
            for window in windows:
                self._leave(window, exc)
            return
        self.last_progress = time.monotonic()
        for window, error in failed.items():
            if is_sticky(error, self._device):
                raise error
            log.error("a request failed while sampling", exc_info=error)
            self._leave(window, out_of_memory("sampling", self._device) if is_out_of_memory(error) else error)
        for window in [w for w in self._active if w.finished]:
            self._leave(window)

    def _step_once(self, windows: list[Window]) -> dict[Window, Exception]:
        """The step, tried once more if it ran out of memory (a step changes no state before its
        last allocation, so it can be retried), then OutOfMemory for all of its windows."""
        try:
            return self.steps.step(windows)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if not self.steps.retry_safe:
                raise out_of_memory("decoding", self._device) from exc
        release_cached_memory(self._device)
        log.warning("a decoding step ran out of memory; trying it once more")
        try:
            return self.steps.step(windows)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory("decoding", self._device) from exc
            raise
