"""`python -m playground`: where the server's webhooks go, and the command itself with a server of its own."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from playground.__main__ import webhook_url
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "server, host, given, expected",
    [
        ("http://127.0.0.1:5000", "127.0.0.1", None, "http://127.0.0.1:7860/api/webhook"),
        ("http://localhost:5000", "0.0.0.0", None, "http://127.0.0.1:7860/api/webhook"),
        ("http://192.168.1.20:5000", "0.0.0.0", None, None),  # a remote server cannot reach our loopback
        ("http://gpu-box:5000", "0.0.0.0", "http://me.lan:7860/api/webhook/", "http://me.lan:7860/api/webhook"),
    ],
)
def test_the_webhook_address(server, host, given, expected):
    assert webhook_url(server, host, 7860, given) == expected


@pytest.mark.slow
def test_the_command_starts_its_own_server_and_stops_it(tiny_weights, tmp_path):
    command = [sys.executable, "-m", "playground", "--weights", str(tiny_weights), "--port", "0"]
    log = open(tmp_path / "playground.log", "w")  # noqa: SIM115 (written by the process until it stops)
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        found = None
        while not found and time.monotonic() < deadline and process.poll() is None:
            found = re.search(
                r"playground on (\S+) for the Cog server at (\S+)", (tmp_path / "playground.log").read_text()
            )
            time.sleep(0.2)
        assert found, (tmp_path / "playground.log").read_text()[-3000:]
        page, server = found.groups()
        while requests.get(f"{page}/api/health", timeout=10).json()["status"] != "READY":
            assert time.monotonic() < deadline, "its server never became READY"
            time.sleep(0.5)
        take = requests.post(f"{page}/api/takes", json={"input": {"prompt": "x", "duration": 1}}, timeout=10).json()
        while (state := requests.get(f"{page}/api/takes/{take['id']}", timeout=10).json())["file_url"] is None:
            assert state["status"] in ("waiting", "starting", "processing", "succeeded"), state
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=60)
        log.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server}/health-check", timeout=5)  # its server went with it
