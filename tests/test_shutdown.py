"""Drain, then stop, through the real server run as deploy/ runs the image: SIGTERM to tini with
predictions in flight; every one ends with a terminal status, and nothing new is started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from musicgen_cog.commands.health import server_status
from musicgen_cog.serving.drain import DRAIN_ENV
from musicgen_cog.serving.load_gauge import METRICS_FILE_ENV
from tests import held_predictor
from tests.cog_server import CogServer, Receiver
from tests.conftest import ROOT
from tests.model.test_decoding_loop import wait_until
from tests.test_stopping import HELD

pytestmark = pytest.mark.slow  # a server of its own per test

TERMINAL = {"succeeded", "failed", "canceled"}


def terminal_webhooks(receiver: Receiver) -> dict[str, dict]:
    """The terminal webhook body of each prediction id that got one."""
    return {body["id"]: body for body in receiver.json_bodies() if body["status"] in TERMINAL}


def started(receiver: Receiver, prediction_id: str) -> bool:
    """Whether the prediction's webhooks show it running in the predictor (its seed is logged)."""
    return any(b["id"] == prediction_id and "Using seed" in (b.get("logs") or "") for b in receiver.json_bodies())


def wait_for_log(server: CogServer, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_path.read_text():
        assert time.monotonic() < deadline, f"the server never logged {text!r}"
        time.sleep(0.05)


@pytest.fixture
def receiver():
    instance = Receiver()
    yield instance
    instance.close()


def drained_server(tiny_weights: Path, tmp_path: Path, grace: float) -> CogServer:
    server = CogServer.as_deployed(tiny_weights, tmp_path / "server.log", env={DRAIN_ENV: str(grace)})
    server.wait_for("READY")
    return server


def test_sigterm_with_three_predictions_in_flight_lets_them_finish_and_refuses_new_ones(
    tiny_weights, schema_file, tmp_path, receiver
):
    server = drained_server(tiny_weights, tmp_path, grace=240)
    try:
        inputs = [
            {"prompt": "text", "duration": 6},
            {"prompt": "mp3", "duration": 5, "output_format": "mp3"},
            {"prompt": "mbd", "duration": 4, "multi_band_diffusion": True},
        ]
        for i, prediction_input in enumerate(inputs):
            server.start(f"in-flight-{i}", receiver, **prediction_input)
        receiver.wait_for(lambda r: all(started(r, f"in-flight-{i}") for i in range(3)))
        server.process.send_signal(signal.SIGTERM)  # to tini, as `docker stop` and the kubelet do
        wait_for_log(server, "draining 3 prediction(s) in flight")

        late_sync = server.predict(input={"prompt": "late", "duration": 1}, when_ready=False).json()
        server.start("late-async", receiver, prompt="late", duration=1)
        assert server.process.wait(timeout=240) == 0
    finally:
        server.stop()
    log = server.log_path.read_text()

    hooks = terminal_webhooks(receiver)
    for i in range(3):
        assert hooks[f"in-flight-{i}"]["status"] == "succeeded", hooks[f"in-flight-{i}"].get("error")
        assert hooks[f"in-flight-{i}"]["output"].startswith("data:audio/")
    for refused in (late_sync, hooks["late-async"]):
        assert refused["status"] == "failed" and refused.get("output") is None
        assert refused["error"].endswith("ShuttingDown: this server is shutting down and did not start the "
                                         "prediction; send it again")  # fmt: skip
    assert "Using seed" not in (late_sync["logs"] or "")  # refused before any work
    assert "drained: 3 finished, 0 cut at the deadline (0 answered while still running), 2 refused" in log
    assert "Slot dropped" not in log and "Shutdown requested via HTTP" in log


def test_predictions_past_the_grace_period_are_cut_with_a_terminal_status_in_webhook_and_response(
    tiny_weights, schema_file, tmp_path, receiver
):
    server = drained_server(tiny_weights, tmp_path, grace=1)
    try:
        server.start("long-async", receiver, prompt="long", duration=240)
        with ThreadPoolExecutor(1) as pool:
            long_sync = pool.submit(server.predict, input={"prompt": "long", "duration": 240}, when_ready=False)
            receiver.wait_for(lambda r: started(r, "long-async"))
            wait_for_log(server, "Using seed", timeout=60)
            while server.log_path.read_text().count("Using seed") < 2:  # the sync one has started too
                time.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            sync_body = long_sync.result(timeout=120).json()
        assert server.process.wait(timeout=120) == 0
    finally:
        server.stop()

    cut_message = (
        "ShuttingDown: this server shut down before the prediction finished: it was still running "
        f"1 s after shutdown began ({DRAIN_ENV}); send it again"
    )
    async_body = terminal_webhooks(receiver)["long-async"]
    for body in (async_body, sync_body):
        assert body["status"] == "failed" and body["error"].endswith(cut_message), body.get("error")
    assert "drained: 0 finished, 2 cut at the deadline (0 answered while still running)" in server.log_path.read_text()


def test_a_prediction_in_a_stage_that_outlasts_the_cut_is_answered_before_the_server_stops(
    tiny_weights, schema_file, tmp_path, receiver
):
    """MBD sees a cut only when it ends (minutes for long audio): its client is told 15 s after the
    deadline, while the work itself is left to the process's end. The stage is the held predictor's,
    held until the test lets it go, after the answer: at any speed, it outlasts the cut."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / held_predictor.SETUP_GO).touch()
    held_env = {"COG_PREDICT_TYPE_STUB": HELD, held_predictor.HOLD_ENV: str(hold)}
    server = CogServer.as_deployed(tiny_weights, tmp_path / "server.log", env={DRAIN_ENV: "1", **held_env})
    try:
        server.wait_for("READY")
        server.start("in-mbd", receiver, prompt="x", duration=60, multi_band_diffusion=True)
        wait_until(lambda: (hold / held_predictor.started("x")).exists())
        server.process.send_signal(signal.SIGTERM)
        receiver.wait_for(lambda r: "in-mbd" in terminal_webhooks(r), timeout=120)
        (hold / held_predictor.go("x")).touch()  # the stage ends; the process may stop
        assert server.process.wait(timeout=120) == 0
    finally:
        server.stop()
    body = terminal_webhooks(receiver)["in-mbd"]
    assert body["status"] == "failed" and "ShuttingDown: this server shut down before" in body["error"]
    assert "drained: 0 finished, 1 cut at the deadline (1 answered while still running)" in server.log_path.read_text()


def test_the_prestop_hook_drains_and_returns_once_the_server_has_stopped(tiny_weights, schema_file, tmp_path, receiver):
    """deploy/kubernetes' preStop command, with tini's pid for the container's PID 1."""
    gauge = tmp_path / "metrics" / "musicgen.prom"
    server = CogServer.as_deployed(
        tiny_weights, tmp_path / "server.log", env={DRAIN_ENV: "240", METRICS_FILE_ENV: str(gauge)}
    )
    port = int(server.url.rsplit(":", 1)[1])
    try:
        server.wait_for("READY")
        for i in range(2):
            server.start(f"in-flight-{i}", receiver, prompt="x", duration=5)
        receiver.wait_for(lambda r: all(started(r, f"in-flight-{i}") for i in range(2)))
        assert "musicgen_predictions_in_flight 2\n" in gauge.read_text()
        hook = subprocess.run(
            [sys.executable, "-m", "musicgen_cog.commands.drain", "--pid", str(server.process.pid), "--settle", "0"],
            cwd=ROOT,
            env={**os.environ, "PORT": str(port)},
            timeout=300,
        )
        assert hook.returncode == 0 and server_status(port) is None
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    hooks = terminal_webhooks(receiver)
    assert [hooks[f"in-flight-{i}"]["status"] for i in range(2)] == ["succeeded", "succeeded"]
    assert "musicgen_predictions_in_flight 0\n" in gauge.read_text()


def test_a_server_stopped_during_setup_exits_without_waiting_for_the_grace_period(tiny_weights, schema_file, tmp_path):
    server = CogServer.as_deployed(tiny_weights, tmp_path / "server.log", env={DRAIN_ENV: "240"})
    try:
        wait_for_log(server, "Running setup")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
    finally:
        server.stop()
