"""The predictions in flight and the drain: refusals, waiting for the last one, cutting the rest."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from musicgen_cog.serving.drain import DRAIN_ENV, REFUSED, InFlight, ShuttingDown, drain_seconds


def test_the_grace_period_is_300_s_unless_the_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv(DRAIN_ENV, raising=False)
    assert drain_seconds() == 300
    monkeypatch.setenv(DRAIN_ENV, "42.5")
    assert drain_seconds() == 42.5


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_grace_period_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(DRAIN_ENV, value)
    expected = f"MUSICGEN_DRAIN_SECONDS must be a number of seconds, 0 or more, got '{value}'"
    with pytest.raises(ValueError, match=expected):
        drain_seconds()


def test_a_drain_waits_for_the_predictions_in_flight_and_refuses_new_ones():
    counts: list[int] = []
    in_flight = InFlight(on_change=counts.append)
    release, admitted = threading.Event(), threading.Barrier(3)

    def prediction() -> str:
        cancelled = threading.Event()
        with in_flight.admit(cancelled):
            admitted.wait()
            release.wait()
            return "file" if not cancelled.is_set() else "stopped"

    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(prediction) for _ in range(2)]
        admitted.wait()
        with ThreadPoolExecutor(1) as drainer:
            drained = drainer.submit(in_flight.drain, 60)
            while not in_flight.draining:
                time.sleep(0.01)
            with pytest.raises(ShuttingDown, match=REFUSED), in_flight.admit(threading.Event()):
                pass
            assert not drained.done()  # still waiting for the two
            release.set()
            result = drained.result(timeout=30)
    assert [r.result() for r in running] == ["file", "file"]
    assert (result.finished, result.cut, result.refused) == (2, 0, 1)
    assert counts[:2] == [1, 2] and counts[-1] == 0 and in_flight.count == 0


def test_predictions_still_running_at_the_deadline_are_stopped_and_fail_with_shutting_down():
    in_flight = InFlight()
    admitted = threading.Event()

    def prediction() -> None:
        cancelled = threading.Event()
        with in_flight.admit(cancelled):
            admitted.set()
            assert cancelled.wait(timeout=30), "the drain never stopped the prediction"
            raise RuntimeError("cancelled at a step boundary")  # as the pipeline's GenerationCancelled

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(prediction)
        admitted.wait()
        result = in_flight.drain(0.1)
        with pytest.raises(ShuttingDown, match=r"still running 0.1 s after shutdown began \(MUSICGEN_DRAIN_SECONDS\)"):
            running.result(timeout=30)
    assert (result.finished, result.cut) == (0, 1) and in_flight.count == 0


def test_a_failure_of_its_own_is_not_turned_into_shutting_down():
    in_flight = InFlight()
    with pytest.raises(ValueError, match="bad input"), in_flight.admit(threading.Event()):
        raise ValueError("bad input")
    assert in_flight.count == 0
