"""What a device's faults become: one request failing with a message a user can act on, or a
server that says it is broken so that its platform replaces it.

- Out of memory (`torch.OutOfMemoryError`; on a CPU the allocator's RuntimeError or MemoryError)
  in any stage of a request fails that request alone, naming the stage, after handing the
  allocator's cached blocks back; the server goes on.
- A sticky device error (`torch.AcceleratorError`: an illegal address, a lost device) leaves
  the CUDA context unusable: `DeviceHealth` remembers it, the decoding loop stops, every request
  fails with it, and the predictor's `healthcheck()` answers False (Cog: UNHEALTHY).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)
CPU_ALLOCATION_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator, in its RuntimeError


class OutOfMemory(RuntimeError):
    """The device ran out of memory in one stage of one request."""


class DeviceFailed(RuntimeError):
    """The device is unusable until the process restarts."""


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and CPU_ALLOCATION_FAILED in str(exc)
    )


def is_sticky(exc: BaseException) -> bool:
    return isinstance(exc, torch.AcceleratorError)


def release_cached_memory(device: str) -> None:
    """Hand the caching allocator's free blocks back to the device, so the next request can use them."""
    if device == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(stage: str, device: str) -> OutOfMemory:
    return OutOfMemory(
        f"the {'GPU' if device == 'cuda' else 'CPU'} ran out of memory while {stage}; "
        "try a shorter duration, or fewer requests at once"
    )


class DeviceHealth:
    """Whether the device still works, as every stage of every request has seen it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failure: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def failed(self, exc: BaseException) -> DeviceFailed:
        """Remember the first sticky error; the error every request gets from now on."""
        with self._lock:
            if self.failure is None:
                self.failure = exc
                log.error("the device failed; this server must be restarted: %s", exc)
        return self.error()

    def error(self) -> DeviceFailed:
        return DeviceFailed(
            f"the GPU failed ({type(self.failure).__name__}: {self.failure}); the server reports itself "
            "unhealthy and must be restarted"
        )

    @contextlib.contextmanager
    def stage(self, what: str, device: str) -> Iterator[None]:
        """Run one stage of a request (`what`: "separating stems", ...): out of memory fails it
        as OutOfMemory, a sticky error marks the device failed."""
        if self.failure is not None:
            raise self.error()
        try:
            yield
        except Exception as exc:
            if is_out_of_memory(exc):
                release_cached_memory(device)
                raise out_of_memory(what, device) from exc
            if is_sticky(exc):
                raise self.failed(exc) from exc
            raise
