"""The short form of `python -m bench.load`: 3x as many Locust clients as slots on the real server,
mixed modes, 409s retried; nothing may fail and every success must be a real file."""

import pytest

from bench.load import run_load, table
from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY

SECONDS, MAX_PREDICTIONS = 20, 48


@pytest.mark.slow
def test_three_clients_per_slot_for_a_while_lose_nothing(server, tmp_path, capsys):
    summary = run_load(server, 3 * DEFAULT_CONCURRENCY, SECONDS, MAX_PREDICTIONS, tmp_path)
    with capsys.disabled():
        print("\n" + table(summary, SECONDS, DEFAULT_CONCURRENCY))
    assert summary["failures"] == []
    assert summary["predictions"] >= 3 * DEFAULT_CONCURRENCY  # each client finishes the one it started
    assert summary["files"] == summary["succeeded"] == summary["predictions"]
    assert len(summary["by_kind"]) == 6  # every mode and format of the mix
    assert summary["http_requests"] == summary["predictions"] + summary["busy_409"]
