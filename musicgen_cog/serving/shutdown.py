"""Drain, then stop: what the worker does on SIGTERM (docs/deployment.md#shutdown-drain-then-stop).

Refuse new predictions, let those in flight finish within the grace period, cut the rest (each
fails with ShuttingDown, so its client gets a terminal status), give coglet a moment to send the
last webhooks, then ask coglet to stop. Installed only inside coglet's worker process.
"""

from __future__ import annotations

import logging
import os
import time

from .coglet_control import stop_coglet
from .drain import InFlight
from .signals import on_sigterm

log = logging.getLogger(__name__)
# coglet sends a terminal webhook from a task of its own once the worker's result reaches it,
# retrying after 0.2, 0.4, 0.8 s...; stopping coglet drops the tasks still pending.
SETTLE_SECONDS = 3.0


def drain_on_sigterm(in_flight: InFlight, grace: float) -> None:
    """On SIGTERM, drain `in_flight` for up to `grace` seconds, then stop the coglet server
    that started this worker (its parent)."""
    coglet = os.getppid()
    on_sigterm(lambda: drain_then_stop(in_flight, grace, coglet))


def drain_then_stop(in_flight: InFlight, grace: float, coglet: int) -> None:
    """The drain itself, then coglet's stop; logs what happened, in the server's log."""
    log.info(
        "SIGTERM: draining %d prediction(s) in flight for up to %g s; new predictions are refused",
        in_flight.count,
        grace,
    )
    result = in_flight.drain(grace)
    log.info(
        "drained: %d finished, %d cut at the deadline (%d answered while still running), %d refused; "
        "stopping the server",
        result.finished,
        result.cut,
        result.abandoned,
        result.refused,
    )
    time.sleep(SETTLE_SECONDS)
    stop_coglet(coglet)
