"""A pytest plugin for `make mutants` only (`-p tests.hang_guard`): a test still running well past
its own usual time ends its process with the status mutmut counts as a timeout.

A mutant that stops the decoding loop leaves a request waiting for ever, and mutmut's own limit is
15 times the usual time of every test of the mutated function together: many minutes for the
loop's. A test's own bound is its time in mutmut's clean run of the tests (`mutmut-stats.json`)
times HANG_FACTOR, plus HANG_FLOOR for what that time leaves out (its fixtures' setup).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

HANG_FACTOR = 5.0
# the longest fixture setup of the core modules' tests (the loop's: two tiny models and their loops)
# is about 1 s on a 2-core VM; several times that
HANG_FLOOR = 8.0
UNTIMED_SECONDS = 60.0  # a test mutmut's clean run did not time
MUTMUT_TIMEOUT = 36  # the exit status mutmut reads as "timeout"
STATS = Path("mutmut-stats.json")  # mutmut runs the tests in its copy of the tree, beside this file


def under_a_mutant() -> bool:
    """Whether mutmut runs these tests on a mutant (not its own runs of them, as they are)."""
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


@cache
def usual_seconds() -> dict[str, float]:
    """Each test's time in mutmut's clean run (the call alone, not its fixtures), by node id."""
    return json.loads(STATS.read_text())["duration_by_test"] if STATS.is_file() else {}


def hang_seconds(nodeid: str) -> float:
    """How long the test `nodeid` may run on a mutant before it counts as hung."""
    usual = usual_seconds().get(nodeid)
    return UNTIMED_SECONDS if usual is None else HANG_FLOOR + HANG_FACTOR * usual


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if not under_a_mutant():
        return (yield)
    watchdog = threading.Timer(hang_seconds(item.nodeid), os._exit, [MUTMUT_TIMEOUT])
    watchdog.daemon = True
    watchdog.start()
    try:
        return (yield)
    finally:
        watchdog.cancel()
