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
# The stop is at once (SIGINT: what is in flight is cut, each with a terminal status): about 2 s here.
STOP_SECONDS = 30
DIES_WITH_US = ("setpriv", "--pdeathsig", "KILL")  # util-linux: the kernel kills make when this process ends


class CogProcess:
    """`make serve PORT=0 WEIGHTS_DIR=<weights>` in a session of its own, its output echoed to stderr.

    make dies with this process, however it ends (SIGKILL included), and tini, make's child, then
    passes SIGINT on to the server (`make serve`): nothing outlives the playground. Create it in the main
    thread: to the kernel, make's parent is the thread that started it, and its end counts as the parent's."""

    def __init__(self, weights: Path, make: str = "make"):
        self.tail: deque[str] = deque(maxlen=40)
        self.port: int | None = None
        self.process = subprocess.Popen(
            [*DIES_WITH_US, make, "--no-print-directory", "serve", "PORT=0", f"WEIGHTS_DIR={weights}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a group for stop() to signal; a Ctrl-C reaches the playground alone
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
        """Stop the server at once and wait for it: SIGINT to make's group (make and tini; tini passes
        it on). If it is still running after STOP_SECONDS, SIGKILL that group: tini's death stops the
        server (its process notices its parent's end), and the worker ends with it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
