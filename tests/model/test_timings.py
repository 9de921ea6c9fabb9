"""A request's stage times add up as each stage ends, from whichever thread it ran in."""

from __future__ import annotations

import threading

import pytest

from musicgen_cog.model.timings import StageTimes


def test_each_stage_adds_its_seconds_and_several_threads_may_add_at_once():
    times = StageTimes()
    threads = [threading.Thread(target=times.add, args=("slot_wait", 0.25)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with times.measure("encoding"):
        pass
    assert times.seconds["slot_wait"] == 2.0 and 0 <= times.seconds["encoding"] < 1


def test_a_stage_is_measured_even_when_it_fails():
    times = StageTimes()
    with pytest.raises(RuntimeError), times.measure("mbd"):
        raise RuntimeError("out of memory")
    assert "mbd" in times.seconds


def test_only_the_known_stages_are_taken():
    with pytest.raises(AssertionError):
        StageTimes().add("lunch", 1.0)
