"""A pytest plugin for `make mutants` only (`-p tests.hang_guard`): a test still running after
HANG_SECONDS ends its process with the status mutmut counts as a timeout.

A mutant that stops the decoding loop leaves a request waiting for ever, and mutmut's own limit is
15 times the usual time of every test of the mutated function: many minutes for the loop's. Every
test run there takes seconds, so a minute without an end is a hang.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

HANG_SECONDS = 60.0
MUTMUT_TIMEOUT = 36  # the exit status mutmut reads as "timeout"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    watchdog = threading.Timer(HANG_SECONDS, os._exit, [MUTMUT_TIMEOUT])
    watchdog.daemon = True
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.cancel()
