"""The stop signals in coglet's own process, decided by us rather than by coglet (docs/signals.md).

coglet 0.23.1 ends on SIGINT (and SIGTERM) without a terminal status for the asynchronous
predictions in flight, and with --await-explicit-shutdown ignores SIGTERM even where nothing would
ever drain (a failed setup). So commands/serve.py blocks SIGTERM, SIGINT and SIGHUP in every thread
before coglet starts, and a thread of ours takes each one: the worker drains (SIGUSR1) or cuts at
once (SIGUSR2) where it can, and with no worker that can (starting, setup failed, crashed), coglet
stops now. The same happens when the process that started the server ends.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import requests

from .coglet_control import catches, child_pids, request_shutdown
from .shutdown import CUT, DRAIN
from .signals import STOP_SIGNALS, on_parent_exit, on_process_exit

log = logging.getLogger(__name__)
# One stop request passed on by several processes (make and tini, or a cgroup-wide kill plus tini's
# forwarding) arrives more than once within milliseconds; a second SIGTERM or SIGHUP, one that cuts
# the drain short, comes this much later at least. SIGINT always cuts.
SAME_REQUEST_SECONDS = 1.0
# A worker told to drain or cut stops coglet, which then ends it; one that ends first (killed, or a
# failed setup's worker already exiting when told) leaves coglet's process to stop itself after this.
WORKER_GONE_SECONDS = 5.0


def block_stop_signals() -> None:
    """Block the stop signals in the calling thread and in every thread it starts from now on: coglet
    never sees them. Call it first in the main thread, before anything starts a thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


class StopRequests:
    """What each stop signal to the server's process means, given the ones before it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: float | None = None
        self._stopping = False
        self._told: set[int] = set()  # the workers watched since they were told

    def take(self, signum: int, sender: int | None) -> None:
        """Act on `signum` from process `sender` (0: the kernel, a terminal's Ctrl-C or hangup; None:
        not a signal, the process that started the server has ended, which counts as SIGINT)."""
        name = "the process that started the server ended" if sender is None else signal.Signals(signum).name
        with self._lock:
            now = time.monotonic()
            if self._first is None:
                self._first, copy, again = now, False, False
            else:
                copy = now - self._first < SAME_REQUEST_SECONDS
                again = not copy
            drainers = [pid for pid in child_pids(os.getpid()) if catches(pid, DRAIN)]
            if sender is not None and sender in drainers:  # the worker's fallback (coglet_control.stop_coglet)
                self._stop_now(f"{name} from the worker, which could not reach coglet", signum)
            elif not drainers:
                if not (copy and self._stopping):
                    self._stop_now(f"{name}: no worker to drain (starting, setup failed or crashed)", signum)
            elif signum == signal.SIGINT or again:
                log.info("%s: the worker cuts the predictions in flight at once, then the server stops", name)
                self._tell(drainers, CUT, signum)
            elif not copy:
                log.info("%s: the worker drains the predictions in flight, then the server stops", name)
                self._tell(drainers, DRAIN, signum)

    def _tell(self, workers: list[int], request: int, signum: int) -> None:
        """Send the workers `request` (DRAIN or CUT), and watch that each stops coglet before it ends;
        one that has ended since leaves nothing to drain."""
        try:
            for pid in workers:
                if pid not in self._told:
                    self._told.add(pid)
                    on_process_exit(pid, lambda: self._worker_ended(signum))
                os.kill(pid, request)
        except ProcessLookupError:
            self._stop_now("the worker ended meanwhile", signum)

    def _worker_ended(self, signum: int) -> None:
        """A told worker has ended; coglet's process, had the worker stopped it, ends within moments."""
        time.sleep(WORKER_GONE_SECONDS)
        with self._lock:
            self._stop_now("the worker ended before it stopped the server", signum)

    def _stop_now(self, why: str, signum: int) -> None:
        """coglet's own stop (/shutdown); if it cannot be asked, or was already asked, exit now."""
        if self._stopping:
            log.info("%s: stopping now", why)
            os._exit(128 + signum)
        self._stopping = True
        log.info("%s: stopping the server", why)
        try:
            request_shutdown(os.getpid())
        except (OSError, LookupError, requests.RequestException) as exc:  # not listening yet, or stuck
            log.error("could not ask coglet to shut down (%s); exiting", exc)
            os._exit(128 + signum)


def take_stop_signals() -> None:
    """Start the threads that take the blocked stop signals and watch the process that started this one."""
    stops = StopRequests()

    def watch() -> None:
        while True:
            received = signal.sigwaitinfo(STOP_SIGNALS)
            stops.take(received.si_signo, received.si_pid)

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()
    on_parent_exit(lambda: stops.take(signal.SIGINT, None))
