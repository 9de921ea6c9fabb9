"""A Cog server the playground starts itself: `make serve` on a free loopback port, with the weights given.

`make serve` is the one place that knows how the server runs without Docker (schema, PATH, stub,
concurrency); the playground only reads the port coglet reports and keeps its last lines for the page."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Starting coglet server on [\d.]+:(\d+)")


class CogProcess:
    """`make serve PORT=0 WEIGHTS_DIR=<weights>` in a process group of its own, its output echoed to stderr."""

    def __init__(self, weights: Path, make: str = "make"):
        self.tail: deque[str] = deque(maxlen=40)
        self.port: int | None = None
        self.process = subprocess.Popen(
            [make, "--no-print-directory", "serve", "PORT=0", f"WEIGHTS_DIR={weights}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # one signal to the group stops make, coglet and its worker together
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sys.stderr.write(f"[cog] {line}")
            self.tail.append(line.rstrip())
            found = LISTENING.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))

    def wait_for_port(self, timeout: float = 600) -> int:
        """The port coglet listens on; raises with its last lines if it exits or never says."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Cog server did not start; its last lines:\n" + "\n".join(self.tail))
            time.sleep(0.1)
        return self.port

    def exited(self) -> str | None:
        """Why the page cannot reach it, once the process is gone: its exit status and last lines."""
        code = self.process.poll()
        if code is None:
            return None
        return f"The Cog server this playground started has exited (status {code}); its last lines:\n" + "\n".join(
            list(self.tail)[-8:]
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
