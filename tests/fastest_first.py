"""A pytest plugin for `make mutants` only (`-p tests.fastest_first`): a mutant's tests run fastest
first, so that a mutant a quick test fails on is judged in seconds (mutmut stops at the first failure).

mutmut hands pytest a mutant's tests in no particular order; its stats run recorded each test's time
in mutmut-stats.json, in the folder it runs pytest from. Tests that share an instance of a fixture
broader than a function stay together, so that it is built once per group; the groups run fastest
test first, and so do the tests within each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from tests.hang_guard import under_a_mutant

STATS = Path("mutmut-stats.json")
SHARED_SCOPES = {"class", "module", "package", "session"}


def shared_instance(item: pytest.Item) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The test's file and the parameters of its fixtures broader than a function: tests with the same
    key share those fixtures' instances."""
    if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):  # no parameters
        return str(item.path), ()
    definitions = item._fixtureinfo.name2fixturedefs
    shared = sorted(
        (name, repr(value))
        for name, value in item.callspec.params.items()
        if name in definitions and definitions[name][-1].scope in SHARED_SCOPES
    )
    return str(item.path), tuple(shared)


def fastest_first(items: list[pytest.Item], seconds: dict[str, float]) -> list[pytest.Item]:
    """`items` in groups that share instances, each group's fastest test first, the fastest group
    first; a test without a recorded time counts as instant."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[pytest.Item]] = defaultdict(list)
    for item in items:
        groups[shared_instance(item)].append(item)
    for group in groups.values():
        group.sort(key=lambda item: seconds.get(item.nodeid, 0.0))
    ordered = sorted(groups.values(), key=lambda group: seconds.get(group[0].nodeid, 0.0))
    return [item for group in ordered for item in group]


@pytest.hookimpl(trylast=True)  # after pytest has grouped the items by their parametrized fixtures
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if under_a_mutant() and STATS.exists():
        items[:] = fastest_first(items, json.loads(STATS.read_text())["duration_by_test"])
