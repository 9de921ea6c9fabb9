"""SIGTERM in coglet's worker process, noticed although Python's main thread never runs there.

coglet's worker spends its life in Rust with the main thread blocked and the GIL released, so a
Python-level handler would never be called. Python's C-level handler still writes the signal's
number to the wakeup fd (`signal.set_wakeup_fd`) the moment it arrives; a thread of ours reads it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


def on_sigterm(callback: Callable[[], None]) -> None:
    """Call `callback()` once, in a thread of its own, when this process gets SIGTERM.

    Call it from the main thread (Python's rule for signal handlers). It replaces the SIGTERM
    disposition the worker inherits from coglet (ignored, under `--await-explicit-shutdown`).
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the C handler must never block on a full pipe
    signal.signal(signal.SIGTERM, _handled_by_the_watcher)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while os.read(read_end, 1)[0] != signal.SIGTERM:  # other signals with Python handlers write here too
            pass
        callback()

    threading.Thread(target=watch, name="sigterm-watch", daemon=True).start()


def _handled_by_the_watcher(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing to do, the wakeup fd already carried the signal."""


def keep_sigterm_from_child_processes() -> None:
    """Block SIGTERM in the calling thread; processes it starts (ffmpeg) inherit the mask.

    SIGTERM reaches the worker through its process group (tini's TINI_KILL_PROCESS_GROUP), which
    holds the ffmpeg an mp3 encode runs too: unblocked, it would die mid-encode during a drain.
    The worker still receives SIGTERM on its other threads.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
