"""What a device's faults become: one request failing with a message a user can act on, or a
server that says it is broken so that its platform replaces it.

- Out of memory (`torch.OutOfMemoryError`; on a CPU the allocator's RuntimeError or MemoryError)
  in any stage of a request fails that request alone, naming the stage, after handing the
  allocator's cached blocks back; the server goes on.
- A sticky device error (an illegal address, a device-side assert, an uncorrectable ECC error: the
  CUDA context is unusable) is told from the other `torch.AcceleratorError`s (since torch 2.8
  every failed CUDA call raises one; a capture that cannot run is not sticky) by its CUDA error
  code, else its text, else by whether the device still runs a kernel. `DeviceHealth` remembers
  it, the decoding loop stops, every request fails with it, and the predictor's `healthcheck()`
  answers False (Cog: UNHEALTHY).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)
CPU_ALLOCATION_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator, in its RuntimeError
# cudaError_t values after which the context is unusable (the CUDA runtime API's "sticky" errors)
STICKY_CUDA_ERRORS = {214, 700, 710, 714, 715, 716, 717, 718, 719}
STICKY_TEXTS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ECC",
    "hardware stack error",
    "invalid program counter",
)
# set while the decoding loop captures a CUDA graph: the caching allocator must not be emptied then
CAPTURING = threading.Event()


class OutOfMemory(RuntimeError):
    """The device ran out of memory in one stage of one request."""


class DeviceFailed(RuntimeError):
    """The device is unusable until the process restarts."""


class CaptureFailed(RuntimeError):
    """A CUDA graph capture failed for a reason other than memory: graphs are off, and PyTorch's
    allocator may be left believing a capture is under way (blocks kept for it are never freed)."""


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and CPU_ALLOCATION_FAILED in str(exc)
    )


def is_sticky(exc: BaseException, device: str) -> bool:
    """Whether `exc` left the device unusable: by its CUDA error code where torch attaches one,
    else by its text, else by asking the device to run a kernel."""
    if not isinstance(exc, torch.AcceleratorError):
        return False
    code = getattr(exc, "error_code", None)
    if isinstance(code, int):
        return code in STICKY_CUDA_ERRORS
    return any(text in str(exc) for text in STICKY_TEXTS) or not device_answers(device)


def device_answers(device: str) -> bool:
    """Whether `device` still runs a kernel and hands back its result."""
    try:
        return bool(torch.ones(1, device=device).add_(1).item() == 2)
    except torch.OutOfMemoryError:
        return True  # full, but answering
    except RuntimeError:
        return False


def release_cached_memory(device: str) -> None:
    """Hand the caching allocator's free blocks back to the device, so the next request can use
    them (not while the loop captures a graph: the allocator's pools are being recorded)."""
    if device == "cuda" and not CAPTURING.is_set():
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
        self.suspicion: str | None = None  # why the device, still working, should be replaced

    @property
    def ok(self) -> bool:
        return self.failure is None

    def suspect(self, reason: str) -> None:
        """Requests go on, but health fails from now on, so that the platform replaces this server."""
        with self._lock:
            if self.suspicion is None:
                self.suspicion = reason
                log.error("%s; health now fails so that the platform replaces this server", reason)

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
            if is_sticky(exc, device):
                raise self.failed(exc) from exc
            raise
