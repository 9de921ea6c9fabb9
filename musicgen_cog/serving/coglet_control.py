"""Asking the coglet server that runs this worker to stop: POST /shutdown on its own port.

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


def stop_coglet(pid: int) -> None:
    """POST /shutdown to the coglet server `pid` (a clean exit, status 0); SIGINT if that fails
    (coglet stops at once too, but exits 130 with a KeyboardInterrupt trace)."""
    try:
        host, port = listening_address(pid)
        requests.post(f"http://{host}:{port}/shutdown", timeout=10).raise_for_status()
    except (OSError, LookupError, requests.RequestException) as exc:
        log.error("could not ask coglet to shut down (%s); sending it SIGINT", exc)
        os.kill(pid, signal.SIGINT)
