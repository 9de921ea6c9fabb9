"""A pytest plugin for `make mutants` only (`-p tests.hang_guard`): a test still running after
HANG_SECONDS ends its process with the status mutmut counts as a timeout.

A mutant that stops the decoding loop leaves a request waiting for ever, and mutmut's own limit is
15 times the usual time of every test of the mutated function: many minutes for the loop's. Every
test run there takes seconds, so a test still running at several times its module's longest is a
hang (a minute unless the driver says less).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

HANG_SECONDS = float(os.environ.get("MUTANTS_HANG_SECONDS", "60"))  # tests/mutants.py sets it per module
MUTMUT_TIMEOUT = 36  # the exit status mutmut reads as "timeout"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):  # mutmut's own runs of the tests
        return (yield)
    watchdog = threading.Timer(HANG_SECONDS, os._exit, [MUTMUT_TIMEOUT])
    watchdog.daemon = True
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.cancel()
