"""A command in a session of its own, and every process it started, found from /proc by session and parent links.

Never by name: a Cog server started by a playground runs in a session of its own (found by parent links
while its parents live), and a process whose parent died is reparented (found by its session).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import psutil

from tests.conftest import ROOT
from tests.helpers import with_default_stop_signals


class ProcessTree:
    """The processes of `root`'s session and their descendants, each remembered once seen (with its start
    time: a reused pid is another process) so that one orphaned or reparented later is still counted."""

    def __init__(self, root: int):
        self.root = root
        self.seen: dict[int, psutil.Process] = {}
        self.refresh()

    def refresh(self) -> None:
        found = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.root:
                    found.append(process)
            except ProcessLookupError:  # ended since the listing
                continue
        for process in [*self.seen.values(), *found]:
            try:
                found += process.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        for process in found:
            if process.pid not in self.seen or not self.seen[process.pid].is_running():
                self.seen[process.pid] = process

    def alive(self) -> list[psutil.Process]:
        """The processes seen that still run: a zombie has ended (this machine's init may never reap it)."""
        running = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                continue
        return running

    def listening_ports(self) -> set[int]:
        """The TCP ports the processes seen listen on."""
        ports = set()
        for process in self.alive():
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            ports |= {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
        return ports

    def describe(self) -> str:
        lines = []
        for process in self.alive():
            try:
                lines.append(f"  {process.pid} (parent {process.ppid()}): {' '.join(process.cmdline())[:160]}")
            except psutil.NoSuchProcess:
                continue
        return "\n".join(lines)

    def wait_gone(self, bound: float) -> None:
        """Wait up to `bound` seconds for every process seen (and any started meanwhile) to end; fail
        naming those left, and any port that is still listened on."""
        ports = self.listening_ports()
        deadline = time.monotonic() + bound
        while True:
            self.refresh()
            if not self.alive():
                break
            assert time.monotonic() < deadline, f"still running {bound:g} s after the signal:\n{self.describe()}"
            time.sleep(0.1)
        still = {c.laddr.port for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN} & ports
        assert not still, f"ports still listened on: {sorted(still)}"


class Command:
    """A command run from the repository root in a session of its own (as a terminal or a supervisor
    starts one), its output in `log`."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=with_default_stop_signals,  # what a terminal or a supervisor would give it
            )
        self.tree = ProcessTree(self.process.pid)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        """The first match of `pattern` in the output, once it appears; fails if the command ends first."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.log.read_text())):
            self._still_waiting(f"printed {pattern!r}", deadline)
        return found

    def wait_for_file(self, path: Path, timeout: float = 300) -> None:
        """Wait until `path` exists (a held predictor's mark); fails if the command ends first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            self._still_waiting(f"made {path.name}", deadline)

    def _still_waiting(self, what: str, deadline: float) -> None:
        assert self.process.poll() is None, f"it ended before it {what}:\n{self.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"it never {what}:\n{self.log.read_text()[-3000:]}"
        time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL every process of the tree still running: a failed test leaves nothing behind either."""
        self.tree.refresh()
        for process in self.tree.alive():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        self.process.wait()
