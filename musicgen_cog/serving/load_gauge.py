"""The predictions in flight as a Prometheus text file: the load signal an autoscaler scales on.

A node-exporter sidecar (its textfile collector) serves the file to Prometheus, so the server
needs no HTTP endpoint of its own; deploy/kubernetes wires it to a HorizontalPodAutoscaler
through prometheus-adapter (docs/deployment.md#beyond-one-machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..files import atomic_write

METRICS_FILE_ENV = "MUSICGEN_METRICS_FILE"


def gauge_from_environment(slots: int) -> Callable[[int], None] | None:
    """A writer of the gauge file MUSICGEN_METRICS_FILE names (written at once with 0 in flight),
    or None when it is not set."""
    name = os.environ.get(METRICS_FILE_ENV, "").strip()
    if not name:
        return None
    path = Path(name)

    def write(in_flight: int) -> None:
        with atomic_write(path) as partial:  # the collector never reads half a file
            partial.write_text(
                "# HELP musicgen_predictions_in_flight Predictions admitted and not yet ended.\n"
                "# TYPE musicgen_predictions_in_flight gauge\n"
                f"musicgen_predictions_in_flight {in_flight}\n"
                "# HELP musicgen_prediction_slots Predictions the server runs at once (COG_MAX_CONCURRENCY).\n"
                "# TYPE musicgen_prediction_slots gauge\n"
                f"musicgen_prediction_slots {slots}\n"
            )

    write(0)
    return write
