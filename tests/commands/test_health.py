"""The exec probe: coglet's /health-check state (always HTTP 200) read into an exit status."""

import http.server
import json
import os
import signal
from urllib.parse import urlparse

import pytest

from musicgen_cog.commands.health import main
from musicgen_cog.serving.coglet_control import child_pids
from tests.cog_server import CogServer
from tests.loopback import LoopbackServer, Quiet


def coglet_saying(status: str) -> LoopbackServer:
    """A stand-in answering /health-check as coglet does: 200, the state in the body."""

    class Handler(Quiet, http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": status, "version": {"coglet": "0.23.1"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return LoopbackServer(Handler)


# status -> (ready, started, alive)
STATES = {
    "STARTING": (1, 1, 0),
    "READY": (0, 0, 0),
    "BUSY": (1, 0, 0),
    "SETUP_FAILED": (1, 1, 0),
    "UNHEALTHY": (1, 1, 1),
    "DEFUNCT": (1, 1, 1),
}


@pytest.mark.parametrize("status", sorted(STATES))
def test_each_state_passes_the_checks_it_should(monkeypatch, capsys, status):
    with coglet_saying(status) as fake:
        monkeypatch.setenv("PORT", str(urlparse(fake.url).port))
        exits = tuple(main([check]) for check in ("ready", "started", "alive"))
    assert exits == STATES[status]
    assert capsys.readouterr().out == f"{status}\n" * 3


def test_a_server_that_does_not_answer_fails_every_check(monkeypatch, capsys):
    with coglet_saying("READY") as fake:
        port = urlparse(fake.url).port
    monkeypatch.setenv("PORT", str(port))  # nothing listens there any more
    assert [main([check]) for check in ("ready", "started", "alive")] == [1, 1, 1]
    assert capsys.readouterr().out == "no answer\n" * 3


def test_the_real_server_once_ready_passes_every_check(server, monkeypatch):
    server.wait_for("READY")
    monkeypatch.setenv("PORT", str(urlparse(server.url).port))
    assert [main([check]) for check in ("ready", "started", "alive")] == [0, 0, 0]


@pytest.mark.slow
def test_a_killed_worker_fails_the_liveness_check(tiny_weights, schema_file, tmp_path, monkeypatch):
    """As the kernel's OOM killer would: coglet stays up, says UNHEALTHY, and must be restarted."""
    server = CogServer(tiny_weights, tmp_path / "server.log")
    try:
        server.wait_for("READY")
        (worker,) = child_pids(server.process.pid)
        os.kill(worker, signal.SIGKILL)
        server.wait_for("UNHEALTHY", timeout=60)
        monkeypatch.setenv("PORT", str(urlparse(server.url).port))
        assert [main([check]) for check in ("ready", "started", "alive")] == [1, 1, 1]
    finally:
        server.stop()


def test_an_unknown_check_is_a_usage_error(capsys):
    assert main(["healthy"]) == 2
    assert "ready|started|alive" in capsys.readouterr().err
