"""Which CUDA stream each thread's work goes to, and the events that order their hand-offs.

On one stream a decode step queued after another request's MultiBand Diffusion would wait for
all of it. So the decoding loop runs on a stream of its own, at high priority, and each request
thread on one of its own (one per thread, reused: cuBLAS keeps a workspace per stream), at
normal priority. torch hands streams out of a pool of 32 per priority, in turn: past about 30
prediction threads two may share one, which orders their work but never breaks it; only the
loop has a high-priority stream. What one stream hands another is ordered by an event and kept alive for the
stream that reads it (`record_stream`): a window's tensors before its admission reads them, a
finished window's tokens before its request reads them. On a CPU every call here does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch


class NoStreams:
    """A CPU's streams: one order, nothing to wait for."""

    def loop(self) -> contextlib.AbstractContextManager:
        """Enter the decoding loop's stream (on the loop's thread)."""
        return contextlib.nullcontext()

    def request(self) -> contextlib.AbstractContextManager:
        """Enter this request thread's own stream."""
        return contextlib.nullcontext()

    def capture(self) -> Any:
        """The stream every CUDA graph capture runs on (the loop's: captures run on its thread)."""
        return None

    def health(self) -> contextlib.AbstractContextManager:
        """Enter the stream of health checks: one of their own, never behind a request's work."""
        return contextlib.nullcontext()

    def mark(self) -> Any:
        """An event at this point of the current stream, for another stream to wait on."""
        return None

    def wait(self, event: Any) -> None:
        """The current stream waits for `event` (None: nothing to wait for)."""

    def keep_alive(self, tensors: Iterable[torch.Tensor]) -> None:
        """`tensors`, made on another stream, stay allocated until the current stream is done with them."""

    def throttle(self, lookahead: int) -> None:
        """Let the host run at most `lookahead` steps ahead of the device (blocking, not spinning)."""


class CudaStreams(NoStreams):
    """Streams of one CUDA device."""

    def __init__(self, device: torch.device | str = "cuda"):
        self.device = torch.device(device)
        _, highest = torch.cuda.Stream.priority_range()  # type: ignore[call-arg]  # static; numerically lowest
        self._loop = torch.cuda.Stream(self.device, priority=highest)
        self._health = torch.cuda.Stream(self.device)
        self._per_thread = threading.local()
        self._ring: deque[torch.cuda.Event] = deque()
        self._spare: list[torch.cuda.Event] = []

    def loop(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self._loop)

    def request(self) -> contextlib.AbstractContextManager:
        stream = getattr(self._per_thread, "stream", None)
        if stream is None:
            stream = self._per_thread.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(stream)

    def capture(self) -> torch.cuda.Stream:
        return self._loop

    def health(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self._health)

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(blocking=True)
        event.record()
        return event

    def wait(self, event: Any) -> None:
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def keep_alive(self, tensors: Iterable[torch.Tensor]) -> None:
        stream = torch.cuda.current_stream()
        for tensor in tensors:
            if tensor.is_cuda:
                tensor.record_stream(stream)

    def throttle(self, lookahead: int) -> None:
        event = self._spare.pop() if self._spare else torch.cuda.Event(blocking=True)
        event.record()
        self._ring.append(event)
        if len(self._ring) > lookahead:
            oldest = self._ring.popleft()
            oldest.synchronize()  # blocking sync: the thread sleeps instead of spinning a core
            self._spare.append(oldest)


def streams_for(device: torch.device | str) -> NoStreams:
    return CudaStreams(device) if torch.device(device).type == "cuda" else NoStreams()
