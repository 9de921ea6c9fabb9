"""coglet's processes as the kernel shows them, and asking the coglet server to stop: POST /shutdown.

The worker inherits coglet's environment but not the port it bound (PORT=0 picks any), so the
address is read from the kernel: the listening TCP socket among the parent process's files.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
from pathlib import Path

import requests

log = logging.getLogger(__name__)
LISTEN = "0A"  # the TCP state column of /proc/net/tcp


def listening_address(pid: int) -> tuple[str, int]:
    """(host, port) of the IPv4 TCP socket process `pid` listens on; 0.0.0.0 reads as 127.0.0.1."""
    fds = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing: a file it no longer holds
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == LISTEN and inode in inodes:
            hex_ip, hex_port = local.split(":")
            host = socket.inet_ntoa(struct.pack("=I", int(hex_ip, 16)))  # printed as a native-endian word
            return ("127.0.0.1" if host == "0.0.0.0" else host), int(hex_port, 16)
    raise LookupError(f"process {pid} listens on no IPv4 TCP port")


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started, from any of its threads (coglet spawns its worker off the main one)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended since the listing (tokio ends idle ones)
            continue
    return children


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (its SigCgt mask); False once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signum - 1) & 1)


def request_shutdown(pid: int) -> None:
    """POST /shutdown to the coglet server `pid`: it stops taking connections, answers those open,
    stops its worker and exits with status 0. Raises if it cannot be asked."""
    host, port = listening_address(pid)
    requests.post(f"http://{host}:{port}/shutdown", timeout=10).raise_for_status()


def stop_coglet(pid: int) -> None:
    """Ask the coglet server `pid` to stop (request_shutdown); SIGINT if that fails (coglet stops at
    once too: under commands/serve.py its process takes that as its own worker asking to stop)."""
    try:
        request_shutdown(pid)
    except (OSError, LookupError, requests.RequestException) as exc:
        log.error("could not ask coglet to shut down (%s); sending it SIGINT", exc)
        os.kill(pid, signal.SIGINT)
