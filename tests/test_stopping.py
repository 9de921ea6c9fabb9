"""Every entry point stops on the signals its supervisors send, in every state, and leaves nothing behind.

Each case starts an entry point in a session of its own, brings it to a state (held there by files
the test controls, through tests/held_predictor.py), sends one signal, and asserts that every process
it started is gone within STOP_BOUND (tests/process_tree.py finds them by session and parent links),
that no port they listened on is still listened on, and that each prediction in flight got a terminal
status. SIGTERM goes to the entry point's process, as `kill`, a container runtime or systemd send it;
SIGINT and SIGHUP go to its process group, as a terminal sends Ctrl-C and a hangup (GNU make passes
SIGTERM on to what it runs, but on SIGINT and SIGHUP waits for it, expecting the group to have it too).
docs/signals.md has the table these cases check.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from musicgen_cog.serving.server_signals import SAME_REQUEST_SECONDS
from tests.cog_server import LISTENING, CogClient, CogServer, Receiver
from tests.held_predictor import HOLD_ENV, SETUP_GO, SETUP_STARTED, go, started
from tests.loopback import LoopbackServer, Quiet
from tests.process_tree import Command

pytestmark = pytest.mark.slow  # an entry point of its own per case: about 15 s each

# Every process of the tree gone, counted from the signal (or from the drained prediction's end).
# The stops take 0.1 to 5 s here (docs/signals.md); the bound is six times the slowest, so that a
# loaded CI machine does not fail it. What these cases found left behind before never ended at all.
STOP_BOUND = 30.0
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
HELD = "tests/held_predictor.py:Predictor"
DRAINING = re.escape("draining 1 prediction(s) in flight")  # the worker's log line
CUT_AT_ONCE = "ShuttingDown: this server shut down before the prediction finished: it was told to stop at once"
TERMINAL = {"succeeded", "failed", "canceled"}


def name(signum: int) -> str:
    return signal.Signals(signum).name


def make(*arguments: str) -> list[str]:
    return ["make", "--no-print-directory", *arguments]


def send(command: Command, signum: int, to_group: bool = False) -> None:
    """As a supervisor sends SIGTERM (to the process), and a terminal SIGINT and SIGHUP (to the group)."""
    command.tree.refresh()
    if signum == signal.SIGTERM and not to_group:
        command.process.send_signal(signum)
    else:
        os.killpg(command.process.pid, signum)


def corrupt_checkpoint(folder: Path) -> Path:
    """A COG_WEIGHTS file that is not a checkpoint: setup fails on it, and the server says SETUP_FAILED."""
    path = folder / "corrupt.tar"
    path.write_bytes(b"not a checkpoint" * 64)
    return path


@pytest.fixture
def hold(tmp_path: Path) -> Path:
    """The folder of the held predictor's files (tests/held_predictor.py)."""
    folder = tmp_path / "hold"
    folder.mkdir()
    return folder


@pytest.fixture
def receiver():
    instance = Receiver()
    yield instance
    instance.close()


def environment(state: str, hold: Path, tmp_path: Path) -> dict[str, str]:
    """The server's environment for `state`: the real predictor on a corrupt fine-tune, or the held one."""
    if state == "setup failed":
        return {"COG_WEIGHTS": str(corrupt_checkpoint(tmp_path))}
    if state != "starting":
        (hold / SETUP_GO).touch()
    return {"COG_PREDICT_TYPE_STUB": HELD, HOLD_ENV: str(hold)}


def reach(state: str, command: Command, hold: Path) -> None:
    """Wait until the server `command` runs is in `state` (busy and draining start from ready)."""
    if state == "starting":
        command.wait_for_file(hold / SETUP_STARTED)
    elif state == "setup failed":
        command.wait_for("Worker initialization failed")
    else:
        command.wait_for("Setup complete, now accepting requests")


def take(page: str, prompt: str) -> str:
    """Start a take on the playground at `page`, as its page does; its id (the server's prediction id)."""
    response = requests.post(f"{page}/api/takes", json={"input": {"prompt": prompt}}, timeout=10)
    response.raise_for_status()
    return str(response.json()["id"])


def cancelled_on_the_server(log: str, prediction_id: str) -> bool:
    """Whether coglet's log says it cancelled the prediction (its terminal status: canceled)."""
    return any("Prediction cancelled" in line and prediction_id in line for line in log.splitlines())


def terminal(receiver: Receiver, prediction_id: str) -> dict:
    """The prediction's terminal webhook, once it has come (a failed test names what did)."""
    receiver.wait_for(lambda r: any(b["id"] == prediction_id and b["status"] in TERMINAL for b in r.json_bodies()))
    return next(b for b in receiver.json_bodies() if b["id"] == prediction_id and b["status"] in TERMINAL)


# --- make serve (the image's command under tini) ------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=name)
@pytest.mark.parametrize("state", ["starting", "setup failed", "ready", "busy", "draining"])
def test_make_serve(state, signum, tiny_weights, schema_file, tmp_path, hold, receiver):
    server = Command(
        make("serve", "PORT=0", f"WEIGHTS_DIR={tiny_weights}"), tmp_path / "out.log", environment(state, hold, tmp_path)
    )
    try:
        reach(state, server, hold)
        if state in ("busy", "draining"):
            client = CogClient(f"http://127.0.0.1:{server.wait_for(LISTENING)[1]}")
            client.start("in-flight", receiver, prompt="in-flight")
            server.wait_for_file(hold / started("in-flight"))
        if state == "draining":
            send(server, signal.SIGTERM)
            server.wait_for(DRAINING)
            time.sleep(SAME_REQUEST_SECONDS)  # a signal sooner is a copy of the first (passed on twice)
        send(server, signum, to_group=state == "draining")  # make, still passing on the first, holds a second
        if state == "busy" and signum != signal.SIGINT:
            server.wait_for(DRAINING)
            (hold / go("in-flight")).touch()  # the drain waits for it to finish
            assert terminal(receiver, "in-flight")["status"] == "succeeded"
        elif state in ("busy", "draining"):  # SIGINT, or a second signal: cut at once
            body = terminal(receiver, "in-flight")
            assert body["status"] == "failed" and CUT_AT_ONCE in body["error"], body
        server.tree.wait_gone(STOP_BOUND)
    finally:
        server.kill()


# --- make playground, with a server of its own and with SERVER_URL ------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=name)
@pytest.mark.parametrize("state", ["starting", "setup failed", "ready", "busy"])
def test_make_playground(state, signum, tiny_weights, schema_file, tmp_path, hold):
    """Its own server stops with it, at once; a take in flight is cancelled on the server first."""
    playground = Command(
        make("playground", f"WEIGHTS_DIR={tiny_weights}", "PLAYGROUND_PORT=0"),
        tmp_path / "out.log",
        environment(state, hold, tmp_path),
    )
    try:
        reach(state, playground, hold)
        if state == "busy":
            in_flight = take(playground.wait_for(r"playground on (\S+) for")[1], "in-flight")
            playground.wait_for_file(hold / started("in-flight"))
        send(playground, signum)
        playground.tree.wait_gone(STOP_BOUND)
    finally:
        playground.kill()
    log = playground.log.read_text()  # the server's log too, echoed
    assert "Slot dropped while InUse with non-terminal prediction" not in log
    if state == "busy":
        assert cancelled_on_the_server(log, in_flight), log[-3000:]


@pytest.fixture(scope="module")
def shared_server(tiny_weights, schema_file, tmp_path_factory):
    """One server, as deployed, for the playgrounds that are given its URL: they stop, it stays."""
    folder = tmp_path_factory.mktemp("shared")
    (folder / SETUP_GO).touch()
    server = CogServer.as_deployed(
        tiny_weights, folder / "server.log", env={"COG_PREDICT_TYPE_STUB": HELD, HOLD_ENV: str(folder)}
    )
    try:
        server.wait_for("READY")
        yield server, folder
    finally:
        server.stop()


@pytest.mark.parametrize("signum", SIGNALS, ids=name)
@pytest.mark.parametrize("state", ["ready", "busy"])
def test_make_playground_with_server_url(state, signum, shared_server, tmp_path):
    """It cancels its takes in flight on the server it was given, and leaves that server running."""
    server, hold = shared_server
    playground = Command(make("playground", f"SERVER_URL={server.url}", "PLAYGROUND_PORT=0"), tmp_path / "out.log")
    prompt = f"in-flight-{name(signum)}"
    try:
        page = playground.wait_for(r"playground on (\S+) for")[1]
        if state == "busy":
            in_flight = take(page, prompt)
            playground.wait_for_file(hold / started(prompt))
        send(playground, signum)
        playground.tree.wait_gone(STOP_BOUND)
    finally:
        playground.kill()
    assert server.health()["status"] == "READY"
    if state == "busy":  # the server still runs, and may log it a moment after answering the cancel
        deadline = time.monotonic() + STOP_BOUND
        while not cancelled_on_the_server(server.log_path.read_text(), in_flight):
            assert time.monotonic() < deadline, "the playground's take was left running on the server"
            time.sleep(0.1)


# --- make predict ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS, ids=name)
@pytest.mark.parametrize("state", ["starting", "busy"])
def test_make_predict(state, signum, tiny_weights, tmp_path, hold):
    """One prediction in this process: a stop ends it, with an exit status that says so and no file."""
    output = tmp_path / "out.wav"
    predict = Command(
        make("predict", f"WEIGHTS_DIR={tiny_weights}", f"ARGS=-i prompt=in-flight -o {output}"),
        tmp_path / "out.log",
        environment(state, hold, tmp_path),
    )
    try:
        predict.wait_for_file(hold / (SETUP_STARTED if state == "starting" else started("in-flight")))
        send(predict, signum)
        predict.tree.wait_gone(STOP_BOUND)
    finally:
        predict.kill()
    assert predict.process.returncode != 0 and not output.exists()


# --- the preStop hook -------------------------------------------------------------------------------


class Busy(LoopbackServer):
    """/health-check of a server still draining: BUSY, for as long as the test lasts."""

    def __init__(self):
        self.asked = 0
        owner = self

        class Handler(Quiet, http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.asked += 1
                body = b'{"status": "BUSY"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


@pytest.mark.parametrize("signum", SIGNALS, ids=name)
@pytest.mark.parametrize("state", ["settling", "waiting for the server"])
def test_the_drain_command(state, signum, tmp_path):
    """Kubernetes runs it directly and stops it by its pid; the server's drain, once begun, goes on."""
    tini = subprocess.Popen(["sleep", "600"])  # stands in for the server's PID 1
    try:
        with Busy() as health:
            port = health.url.rsplit(":", 1)[1]
            settle = "600" if state == "settling" else "0"
            command = [sys.executable, "-m", "musicgen_cog.commands.drain", "--pid", str(tini.pid), "--settle", settle]
            drain = Command(command, tmp_path / "out.log", env={"PORT": port})
            try:
                if state == "settling":
                    drain.wait_for("drain: SIGTERM to process")
                else:
                    drain.wait_for("drain: SIGTERM sent")
                    while not health.asked:
                        time.sleep(0.05)
                drain.tree.refresh()
                drain.process.send_signal(signum)
                drain.tree.wait_gone(STOP_BOUND)
            finally:
                drain.kill()
        if state == "settling":
            assert tini.poll() is None  # stopped before it sent anything
        else:
            assert tini.wait(timeout=60) == -signal.SIGTERM  # the server's drain, once begun, is the server's
    finally:
        tini.kill()
        tini.wait()


# --- a parent killed (SIGKILL): what it started notices, and stops ------------------------------------


def test_a_playground_killed_takes_its_server_with_it(tiny_weights, schema_file, tmp_path, hold):
    (hold / SETUP_GO).touch()
    command = [sys.executable, "-m", "playground", "--weights", str(tiny_weights), "--port", "0"]
    playground = Command(command, tmp_path / "out.log", {"COG_PREDICT_TYPE_STUB": HELD, HOLD_ENV: str(hold)})
    try:
        playground.wait_for("Setup complete, now accepting requests")
        playground.tree.refresh()
        playground.process.kill()
        playground.tree.wait_gone(STOP_BOUND)
    finally:
        playground.kill()


@pytest.mark.parametrize("state", ["starting", "ready"])
def test_coglets_worker_ends_when_coglets_process_is_killed(state, tiny_weights, schema_file, tmp_path, hold):
    """In setup the worker runs Python's code, not coglet's loop that would notice its parent's end."""
    server = Command(
        make("serve", "PORT=0", f"WEIGHTS_DIR={tiny_weights}"), tmp_path / "out.log", environment(state, hold, tmp_path)
    )
    try:
        reach(state, server, hold)
        (tini,) = psutil.Process(server.process.pid).children()
        (coglet,) = tini.children()
        server.tree.refresh()
        coglet.kill()
        server.tree.wait_gone(STOP_BOUND)
    finally:
        server.kill()


@pytest.mark.parametrize("state", ["ready", "busy"])
def test_a_worker_that_ends_after_it_was_told_to_drain_still_stops_the_server(
    state, tiny_weights, schema_file, tmp_path, hold, receiver
):
    """It was told, so coglet's process waits on it; one that ends without stopping coglet (killed, or
    a failed setup's worker exiting just as the signal came) leaves coglet's process to stop itself."""
    server = Command(
        make("serve", "PORT=0", f"WEIGHTS_DIR={tiny_weights}"), tmp_path / "out.log", environment(state, hold, tmp_path)
    )
    try:
        reach("ready", server, hold)
        (tini,) = psutil.Process(server.process.pid).children()
        (coglet,) = tini.children()
        (worker,) = coglet.children()
        if state == "busy":
            client = CogClient(f"http://127.0.0.1:{server.wait_for(LISTENING)[1]}")
            client.start("in-flight", receiver, prompt="in-flight")
            server.wait_for_file(hold / started("in-flight"))
        worker.suspend()  # told while still alive, it acts on nothing before it is killed
        send(server, signal.SIGTERM)
        server.wait_for("the worker drains the predictions in flight")
        server.tree.refresh()
        worker.kill()
        if state == "busy":  # coglet fails what its worker held
            assert terminal(receiver, "in-flight")["status"] == "failed"
        server.tree.wait_gone(STOP_BOUND)
        assert "the worker ended before it stopped the server" in server.log.read_text()
    finally:
        server.kill()


@pytest.mark.parametrize("killed", ["make", "make's group"])
def test_make_serve_killed(killed, tiny_weights, schema_file, tmp_path, hold):
    """make alone: tini's parent-death signal. make and tini (a harness killing the group): coglet's
    process notices its parent's end; tini had put it in a group of its own."""
    server = Command(
        make("serve", "PORT=0", f"WEIGHTS_DIR={tiny_weights}"),
        tmp_path / "out.log",
        environment("ready", hold, tmp_path),
    )
    try:
        reach("ready", server, hold)
        server.tree.refresh()
        if killed == "make":
            server.process.kill()
        else:
            os.killpg(server.process.pid, signal.SIGKILL)
        server.tree.wait_gone(STOP_BOUND)
    finally:
        server.kill()


def test_make_playground_killed(tiny_weights, schema_file, tmp_path, hold):
    """make's child, the playground, gets SIGTERM from the kernel, and stops its server."""
    playground = Command(
        make("playground", f"WEIGHTS_DIR={tiny_weights}", "PLAYGROUND_PORT=0"),
        tmp_path / "out.log",
        environment("ready", hold, tmp_path),
    )
    try:
        reach("ready", playground, hold)
        playground.tree.refresh()
        playground.process.kill()
        playground.tree.wait_gone(STOP_BOUND)
    finally:
        playground.kill()
