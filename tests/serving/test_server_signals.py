"""What each stop signal to the server's process means, given the worker's state and the signals before it.

The decisions alone, with the processes and the clock stood in for; tests/test_stopping.py sends the
signals to the real processes."""

import signal
from typing import Any

import pytest

from musicgen_cog.serving import server_signals
from musicgen_cog.serving.server_signals import SAME_REQUEST_SECONDS, StopRequests
from musicgen_cog.serving.shutdown import CUT, DRAIN

WORKER, SUPERVISOR = 4242, 1
TERM, INT, HUP = signal.SIGTERM, signal.SIGINT, signal.SIGHUP


class Exited(Exception):
    pass


@pytest.fixture
def server(monkeypatch):
    """A server process whose worker drains (`state["drains"]`), recording what it is asked to do."""
    state: dict[str, Any] = {"drains": True, "now": 100.0, "shutdown fails": False, "ends": []}
    done: list = []

    def request_shutdown(pid):
        done.append("shutdown")
        if state["shutdown fails"]:
            raise ConnectionRefusedError("not listening")

    def exit_now(status):
        done.append(("exit", status))
        raise Exited()

    monkeypatch.setattr(server_signals, "child_pids", lambda pid: [WORKER])
    monkeypatch.setattr(server_signals, "catches", lambda pid, signum: state["drains"] and signum == DRAIN)
    monkeypatch.setattr(server_signals.os, "kill", lambda pid, signum: done.append((pid, signum)))
    monkeypatch.setattr(server_signals, "request_shutdown", request_shutdown)
    monkeypatch.setattr(server_signals.os, "_exit", exit_now)
    monkeypatch.setattr(server_signals.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(server_signals.time, "sleep", lambda seconds: done.append(("waited", seconds)))
    # the callback due when a watched process ends: the test calls it where the worker would end
    monkeypatch.setattr(server_signals, "on_process_exit", lambda pid, ended: state["ends"].append((pid, ended)))
    return StopRequests(), state, done


@pytest.mark.parametrize("first", [TERM, HUP])
def test_sigterm_or_sighup_drains_a_copy_is_ignored_and_a_second_one_cuts(server, first):
    requests, state, done = server
    requests.take(first, SUPERVISOR)
    state["now"] += SAME_REQUEST_SECONDS / 2  # passed on again by a forwarder (make, tini)
    requests.take(TERM, SUPERVISOR)
    assert done == [(WORKER, DRAIN)]
    state["now"] += SAME_REQUEST_SECONDS
    requests.take(first, SUPERVISOR)
    assert done == [(WORKER, DRAIN), (WORKER, CUT)]


def test_sigint_cuts_at_once_even_as_a_copy(server):
    requests, _, done = server
    requests.take(TERM, SUPERVISOR)
    requests.take(INT, SUPERVISOR)
    assert done == [(WORKER, DRAIN), (WORKER, CUT)]


def test_the_end_of_the_process_that_started_the_server_cuts_at_once(server):
    requests, _, done = server
    requests.take(INT, None)
    assert done == [(WORKER, CUT)]


@pytest.mark.parametrize("signum", [TERM, INT, HUP])
def test_with_no_worker_to_drain_coglet_is_stopped_and_a_second_signal_exits(server, signum):
    """Starting (the worker has not loaded predict.py yet), setup failed or the worker crashed."""
    requests, state, done = server
    state["drains"] = False
    requests.take(signum, SUPERVISOR)
    requests.take(signum, SUPERVISOR)  # a copy, while coglet stops
    assert done == ["shutdown"]
    state["now"] += SAME_REQUEST_SECONDS
    with pytest.raises(Exited):
        requests.take(TERM, SUPERVISOR)
    assert done == ["shutdown", ("exit", 128 + TERM)]


def test_a_server_that_cannot_be_asked_to_stop_exits(server):
    requests, state, done = server
    state["drains"], state["shutdown fails"] = False, True
    with pytest.raises(Exited):
        requests.take(HUP, SUPERVISOR)
    assert done == ["shutdown", ("exit", 128 + HUP)]


def test_the_worker_asking_itself_stops_coglet(server):
    """coglet_control.stop_coglet's fallback, when the worker could not reach /shutdown."""
    requests, _, done = server
    requests.take(TERM, SUPERVISOR)
    requests.take(INT, WORKER)
    assert done == [(WORKER, DRAIN), "shutdown"]


@pytest.mark.parametrize("second", [None, INT])
def test_a_worker_that_ends_after_it_was_told_leaves_the_server_to_stop_itself(server, second):
    """Killed mid-drain, or a failed setup's worker exiting as it was told: nothing else stops coglet.
    Watched once, however often it is told."""
    requests, state, done = server
    requests.take(TERM, SUPERVISOR)
    if second:
        requests.take(second, SUPERVISOR)
    [(watched, ended)] = state["ends"]
    assert watched == WORKER
    told = done.copy()
    ended()
    assert done == [*told, ("waited", server_signals.WORKER_GONE_SECONDS), "shutdown"]
