"""`make playground`: the page on PLAYGROUND_HOST:PLAYGROUND_PORT (127.0.0.1:7860), against a Cog server.

python -m playground --server URL      a running server (`make serve`, a `docker run` container, a deployment)
python -m playground --weights DIR     start one here first, with `make serve`, on those weights
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from playground.app import create_app
from playground.cog_client import CogClient
from playground.cog_process import CogProcess
from playground.service import Playground


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_url(server_url: str, host: str, port: int, given: str | None) -> str | None:
    """Where the server can send its updates: given, or this process's loopback address when the server is
    local; None (one sync request per take: no live logs) when a remote server could not reach us."""
    if given:
        return given.rstrip("/")
    if not is_loopback(urlsplit(server_url).hostname or ""):
        return None
    local = "127.0.0.1" if host == "0.0.0.0" or is_loopback(host) else host
    return f"http://{local}:{port}/api/webhook"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m playground", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="base URL of a running Cog server of this project")
    where.add_argument("--weights", type=Path, help="start a Cog server here on this weights folder")
    parser.add_argument("--host", default=os.environ.get("PLAYGROUND_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PLAYGROUND_PORT", "7860")))
    parser.add_argument(
        "--webhook-url",
        default=os.environ.get("PLAYGROUND_WEBHOOK_URL"),
        help="this playground's /api/webhook as the server reaches it (needed for live logs from a remote server)",
    )
    return parser.parse_args()


def unwind(signum: int, frame: object) -> None:
    """SIGTERM unwinds the stack as Ctrl-C does, so that `finally` stops the server started here (while
    the page runs, uvicorn takes SIGTERM first, stops the page and its takes, then raises it again)."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, unwind)
    signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))  # a terminal closed
    args = arguments()
    listener = socket.create_server((args.host, args.port))  # bound first: port 0 picks one we then know
    port = listener.getsockname()[1]
    process = CogProcess(args.weights.resolve()) if args.weights else None
    try:
        server_url = args.server or f"http://127.0.0.1:{process.wait_for_port() if process else 0}"
        hook = webhook_url(server_url, args.host, port, args.webhook_url)
        with tempfile.TemporaryDirectory(prefix="playground-") as folder:
            playground = Playground(CogClient(server_url), hook, Path(folder))
            print(f"playground on http://{args.host}:{port} for the Cog server at {server_url}", flush=True)
            uvicorn.Server(uvicorn.Config(create_app(playground, process), log_level="warning")).run(sockets=[listener])
    finally:
        if process:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})  # stop in full
            process.stop()


if __name__ == "__main__":
    main()
