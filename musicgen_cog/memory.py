"""Returning freed heap memory to the OS after each prediction.

coglet runs predictions on a worker thread; glibc gives that thread its own malloc arena, and
the varying tensor sizes of melody and continuation requests fragment it, so a long-running
server's RSS creeps up although nothing is leaked. `malloc_trim(0)` hands the free pages back.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return library if library is not None and hasattr(library, "malloc_trim") else None


def release_freed_memory() -> None:
    """Trim every glibc malloc arena; a no-op where the C library has no malloc_trim."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
