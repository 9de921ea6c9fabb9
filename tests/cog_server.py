"""The real Cog HTTP server (coglet) in a subprocess on a free loopback port, its API as the tests call it, and
loopback receivers."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from tests.conftest import ROOT
from tests.loopback import LoopbackServer, Quiet

VENV_BIN = Path(sys.executable).parent
LISTENING = r"Starting coglet server on 127\.0\.0\.1:(\d+)"  # coglet's log line, with the port it bound


class CogClient:
    """The HTTP API of the Cog server at `url`, as the tests call it."""

    def __init__(self, url: str):
        self.url = url

    def health(self) -> dict:
        return requests.get(f"{self.url}/health-check", timeout=10).json()

    def wait_for(self, *statuses: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health["status"] in statuses:
                return health
            if health["status"] == "SETUP_FAILED":
                raise RuntimeError(f"setup failed: {health.get('setup', {}).get('logs', '')[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"server stayed {self.health()['status']}, wanted {statuses}")

    def predict(
        self,
        timeout: float = 300,
        headers: dict | None = None,
        when_ready: bool = True,
        retry_busy: bool = True,
        **body,
    ) -> requests.Response:
        """POST /predictions, first waiting for READY if asked; a 409 (every slot busy) is retried
        for up to 30 s unless `retry_busy` is off: coglet 0.23 frees a slot only just after
        answering its prediction, so a client that sends again at once can meet a full server."""
        if when_ready:
            self.wait_for("READY", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            response = requests.post(f"{self.url}/predictions", json=body, headers=headers, timeout=timeout)
            if response.status_code != 409 or not retry_busy or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def start(self, prediction_id: str, receiver: Receiver, **prediction_input) -> None:
        """Start an async prediction whose webhooks go to `receiver`."""
        response = self.predict(
            headers={"Prefer": "respond-async"},
            id=prediction_id,
            input=prediction_input,
            webhook=f"{receiver.url}/hook",
            when_ready=False,
        )
        assert response.status_code == 202, response.text

    def cancel_mid_way(self, prediction_id: str, receiver: Receiver) -> str:
        """Once `prediction_id` logs decoding progress, cancel it; the logs it ended with (canceled).
        How fast a cancel takes effect is a latency, for benches; that it stopped the work shows in
        the logs: no line of a finished generation."""

        def of_it(r: Receiver) -> list[dict]:
            return [b for b in r.json_bodies() if b["id"] == prediction_id]

        receiver.wait_for(lambda r: any("generation:" in (b.get("logs") or "") for b in of_it(r)))
        assert requests.post(f"{self.url}/predictions/{prediction_id}/cancel", timeout=10).status_code == 200
        receiver.wait_for(lambda r: any(b["status"] == "canceled" for b in of_it(r)), timeout=60)
        logs = next(b for b in of_it(receiver) if b["status"] == "canceled").get("logs") or ""
        assert "(100%)" not in logs and "wrote " not in logs, "it finished instead of stopping"
        return logs


class CogServer(CogClient):
    """`python -m <module>` from the repo root: coglet's own `cog.server.http`, as the image's default
    command runs it, or as `make serve` and deploy/ run it; `launcher` goes before it (tini, as the
    image's entry point)."""

    def __init__(
        self,
        weights_dir: Path,
        log_path: Path,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        launcher: tuple[str, ...] = (),
        module: str = "cog.server.http",
    ):
        self.log_path = log_path
        environment = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "PORT": "0",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "WEIGHTS_DIR": str(weights_dir),
            "MUSICGEN_OUTPUT_DIR": str(log_path.parent / "outputs"),
            "OMP_NUM_THREADS": "1",
            # what `cog build` bakes into an image from predict.py's @concurrent; coglet reads only this
            "COG_MAX_CONCURRENCY": str(DEFAULT_CONCURRENCY),
            **(env or {}),
        }
        self.log = open(log_path, "w")  # noqa: SIM115 (the server writes it until stop())
        self.process = subprocess.Popen(
            [*launcher, sys.executable, "-m", module, "--host", "127.0.0.1", *args],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        super().__init__(f"http://127.0.0.1:{self._port()}")

    @classmethod
    def as_deployed(cls, weights_dir: Path, log_path: Path, env: dict | None = None) -> CogServer:
        """The server as deploy/ runs the image, draining on SIGTERM (docs/signals.md): under
        tini, the image's entry point, with coglet's stop signals decided by commands/serve.py."""
        return cls(weights_dir, log_path, env=env, launcher=("tini", "--"), module="musicgen_cog.commands.serve")

    def _port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(LISTENING, self.log_path.read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start; its log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


HELD_SECONDS = 600


class Receiver(LoopbackServer):
    """A loopback HTTP server recording what is POSTed (webhooks) or PUT (uploads) to it."""

    def __init__(self, held: bool = False):
        """`held`: a receiver that hangs: each request waits unanswered until `answering` is set
        (or HELD_SECONDS, longer than any request of the tests waits)."""
        self.received: list[tuple[str, str, bytes]] = []
        self.arrived: list[str] = []  # paths, as each request comes in
        self.answering = threading.Event()
        if not held:
            self.answering.set()
        receiver = self

        class Handler(Quiet, http.server.BaseHTTPRequestHandler):
            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.arrived.append(self.path)
                receiver.answering.wait(timeout=HELD_SECONDS)
                receiver.received.append((self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

        super().__init__(Handler)

    def json_bodies(self) -> list[dict]:
        return [json.loads(body) for method, _, body in self.received if method == "POST"]

    def wait_for(self, predicate, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.05)
        raise TimeoutError(f"receiver never saw what was expected; got {[r[:2] for r in self.received]}")
