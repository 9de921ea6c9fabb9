"""Log lines a person reads in `cog predict` output and the HTTP prediction's `logs`."""

from __future__ import annotations

import logging
import sys


class PlainLines(logging.StreamHandler):
    """Each record as its bare message on stderr (Cog streams both streams into the logs)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))


def configure_logging(level: int = logging.INFO) -> None:
    """Send this package's log records to stderr, one plain line each; once, however often called."""
    logger = logging.getLogger("musicgen_cog")
    if not any(isinstance(handler, PlainLines) for handler in logger.handlers):
        logger.addHandler(PlainLines())
    logger.setLevel(level)
    logger.propagate = False
