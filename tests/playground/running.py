"""A playground on a free loopback port in a thread of the test process, against any Cog server URL.

It is the app `python -m playground` serves (same routes, same webhook address rule), run by uvicorn;
tests/playground/test_main.py runs the command itself once."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import requests
import uvicorn

from playground.__main__ import webhook_url
from playground.app import create_app
from playground.cog_client import CogClient
from playground.service import Playground


def closed_port() -> int:
    """A loopback port nothing listens on (bound a moment, then freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningPlayground:
    """`with RunningPlayground(server_url) as playground:` ... `playground.url` ... (stopped at the end)."""

    def __init__(self, server_url: str, live_updates: bool = True, webhook: str | None = None, **timings: float):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.folder = tempfile.TemporaryDirectory(prefix="playground-test-")
        hook = webhook_url(server_url, "127.0.0.1", port, webhook) if live_updates else None
        self.playground = Playground(CogClient(server_url), hook, Path(self.folder.name), **timings)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.playground), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def api(self, path: str, body: dict | None = None) -> dict:
        """GET `path` of the playground's JSON API, or POST `body` to it."""
        if body is None:
            return dict(requests.get(f"{self.url}{path}", timeout=10).json())
        return dict(requests.post(f"{self.url}{path}", json=body, timeout=10).json())

    def get(self, path: str) -> bytes:
        response = requests.get(f"{self.url}{path}", timeout=30)
        assert response.status_code == 200, response.text
        return response.content

    def wait_for(self, take_id: str, *statuses: str, timeout: float = 180) -> dict:
        """Poll a take as the page does until it reaches one of `statuses` (its file saved, for a success)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            take = self.api(f"/api/takes/{take_id}")
            if take["status"] in statuses and (take["status"] != "succeeded" or take["file_url"]):
                return take
            time.sleep(0.1)
        raise TimeoutError(f"take {take_id} stayed {take['status']}, wanted {statuses}: {take}")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.folder.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
