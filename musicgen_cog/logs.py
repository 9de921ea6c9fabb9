"""Log lines a person reads in `cog predict` output and the HTTP prediction's `logs`."""
from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Send this package's log records to stderr, one plain line each (Cog streams both streams)."""
    logger = logging.getLogger("musicgen_cog")
    if not any(getattr(h, "musicgen_cog", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.musicgen_cog = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
