"""Drain, then stop: what coglet's worker does when the server's process asks (docs/signals.md).

SIGUSR1 (the server got SIGTERM or SIGHUP): refuse new predictions, let those in flight finish
within the grace period, cut the rest. SIGUSR2 (SIGINT, or a second stop signal): cut them now.
Either way each prediction ends with a terminal status; then coglet gets a moment to send the last
webhooks and is asked to stop. commands/serve.py, in coglet's own process, sends these signals;
the worker ignores the stop signals themselves, and ends at once if coglet's process ends first.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .coglet_control import stop_coglet
from .drain import InFlight
from .signals import STOP_SIGNALS, on_parent_exit, on_signals

log = logging.getLogger(__name__)
DRAIN, CUT = signal.SIGUSR1, signal.SIGUSR2
# coglet sends a terminal webhook from a task of its own once the worker's result reaches it,
# retrying after 0.2, 0.4, 0.8 s...; stopping coglet drops the tasks still pending.
SETTLE_SECONDS = 3.0
ORPHANED = 1  # the worker's exit status once coglet's process has gone: nobody can receive its answers


def stop_when_asked(in_flight: InFlight, grace: float) -> None:
    """In coglet's worker: drain `in_flight` for up to `grace` seconds on DRAIN, at once on CUT, then
    stop the coglet server that started this worker (its parent). Call it from the main thread."""
    coglet = os.getppid()
    drain: list[threading.Thread] = []

    def begin() -> None:
        if not drain:
            drain.append(threading.Thread(target=drain_then_stop, args=(in_flight, grace, coglet), name="drain"))
            drain[0].start()

    def asked_to_drain() -> None:
        if not drain:
            log.info(
                "draining %d prediction(s) in flight for up to %g s; new predictions are refused",
                in_flight.count,
                grace,
            )
        begin()

    def asked_to_cut() -> None:
        log.info("stopping at once: %d prediction(s) in flight are cut; new predictions are refused", in_flight.count)
        in_flight.cut_now()
        begin()

    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # the server's process decides what they mean
    on_signals({DRAIN: asked_to_drain, CUT: asked_to_cut})
    on_parent_exit(lambda: os._exit(ORPHANED))


def drain_then_stop(in_flight: InFlight, grace: float, coglet: int) -> None:
    """The drain itself, then coglet's stop; logs what happened, in the server's log."""
    result = in_flight.drain(grace)
    log.info(
        "drained: %d finished, %d cut at the deadline (%d answered while still running), %d refused; "
        "stopping the server",
        result.finished,
        result.cut,
        result.abandoned,
        result.refused,
    )
    if result.finished or result.cut or result.refused:  # answers whose webhooks may still be on their way
        time.sleep(SETTLE_SECONDS)
    stop_coglet(coglet)
