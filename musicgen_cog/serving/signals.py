"""Signals in coglet's worker process, noticed although Python's main thread never runs there, and
the end of the process that started this one, which no signal announces.

coglet's worker spends its life in Rust with the main thread blocked and the GIL released, so a
Python-level handler would never be called. Python's C-level handler still writes the signal's
number to the wakeup fd (`signal.set_wakeup_fd`) the moment it arrives; a thread of ours reads it.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType

# What a supervisor, a terminal or a person sends to stop a process (commands/serve.py decides for
# the server); processes that predictions start must not die of them mid-work.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def on_signals(callbacks: Mapping[int, Callable[[], None]]) -> None:
    """Call `callbacks[signum]()` each time this process gets `signum`, in one thread of ours, in order.

    Call it from the main thread (Python's rule for signal handlers), once per process: the wakeup fd
    is process-wide. Callbacks must return quickly; one that waits starts a thread of its own.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the C handler must never block on a full pipe
    for signum in callbacks:
        signal.signal(signum, _handled_by_the_watcher)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            signum = os.read(read_end, 1)[0]
            if signum in callbacks:  # other signals with Python handlers write here too
                callbacks[signum]()

    threading.Thread(target=watch, name="signal-watch", daemon=True).start()


def _handled_by_the_watcher(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing to do, the wakeup fd already carried the signal."""


def on_parent_exit(callback: Callable[[], None]) -> None:
    """Call `callback()`, in a thread of its own, once the process that started this one has ended
    (at once if it already has)."""
    parent = os.getppid()
    pidfd = os.pidfd_open(parent)
    if os.getppid() != parent:  # it ended before the pidfd was opened: this process was reparented
        os.close(pidfd)
        _call_once_ended(None, callback, "parent-watch")
    else:
        _call_once_ended(pidfd, callback, "parent-watch")


def on_process_exit(pid: int, callback: Callable[[], None]) -> None:
    """Call `callback()`, in a thread of its own, once process `pid` has ended; at once if it already
    has. For a child of this one: its pid cannot be reused before this process has reaped it."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    _call_once_ended(pidfd, callback, f"exit-watch-{pid}")


def _call_once_ended(pidfd: int | None, callback: Callable[[], None], name: str) -> None:
    """A pidfd is readable once its process has ended: no polling, and no pid reused meanwhile.
    None: the process has already ended."""

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
            os.close(pidfd)
        callback()

    threading.Thread(target=watch, name=name, daemon=True).start()


def keep_stop_signals_from_child_processes() -> None:
    """Block the stop signals in the calling thread; processes it starts (ffmpeg) inherit the mask.

    A signal to a process group or a cgroup (a terminal's Ctrl-C, systemd's stop) reaches the ffmpeg
    an mp3 encode runs too: unblocked, it would die mid-encode while its prediction is meant to
    finish. The worker itself still receives them on its other threads.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
