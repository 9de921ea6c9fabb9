"""How many predictions run at once, and the threads their blocking work runs in.

Cog runs up to the limit of `predict` coroutines at once (`@cog.concurrent`, overridden by
COG_MAX_CONCURRENCY); each hands its work to a thread of its own, so that input decoding,
stems, MBD, encoding and writing never block the event loop or the shared decoding loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

DEFAULT_CONCURRENCY = 8  # what 8 slots cost in memory: docs/memory-and-faults.md#memory
CONCURRENCY_ENV = "COG_MAX_CONCURRENCY"  # Cog's own setting; the KV cache is sized by it too
T = TypeVar("T")


def concurrency_limit() -> int:
    """The predictions served at once: COG_MAX_CONCURRENCY if set, else DEFAULT_CONCURRENCY."""
    raw = os.environ.get(CONCURRENCY_ENV, "").strip()
    if not raw:
        return DEFAULT_CONCURRENCY
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{CONCURRENCY_ENV} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


class RequestThreads:
    """One thread per prediction in flight, carrying its context (Cog routes its log lines by it)."""

    def __init__(self, limit: int, initializer: Callable[[], None] | None = None):
        """`initializer` runs once in each new thread, before its first prediction."""
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="prediction", initializer=initializer)

    async def run(self, work: Callable[[threading.Event], T], cancelled: threading.Event | None = None) -> T:
        """`work(cancelled)` in a thread; if the prediction is cancelled, set `cancelled` and wait
        until the work has stopped (at its next step boundary), so nothing outlives it. Others may
        set `cancelled` too (a drain's deadline)."""
        cancelled = cancelled or threading.Event()
        context = contextvars.copy_context()
        running = asyncio.get_running_loop().run_in_executor(self._executor, context.run, work, cancelled)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(Exception):
                await running
            raise
