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


class RunningPlayground:
    """`with RunningPlayground(server_url) as playground:` ... `playground.url` ... (stopped at the end)."""

    def __init__(self, server_url: str, live_updates: bool = True, **timings: float):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.folder = tempfile.TemporaryDirectory(prefix="playground-test-")
        hook = webhook_url(server_url, "127.0.0.1", port, None) if live_updates else None
        self.playground = Playground(CogClient(server_url), hook, Path(self.folder.name), **timings)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.playground), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def api(self, path: str) -> dict:
        response = requests.get(f"{self.url}{path}", timeout=10)
        return dict(response.json())

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.folder.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
