"""`python -m musicgen_cog.commands.drain [--pid 1] [--settle 5]`: Kubernetes' preStop hook.

Waits `--settle` seconds, so that the load balancers have dropped this pod from their endpoints
before it starts refusing predictions, then sends SIGTERM to the server's init process (tini,
PID 1 in the container, which passes it to coglet and its worker: docs/deployment.md) and waits
until the server stops answering, so the drain is over before the kubelet sends its own SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from ..serving.drain import CUT_WAIT_SECONDS, drain_seconds
from .health import server_status

POLL_SECONDS = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, default=1, help="the server's init process (tini): 1 in a container")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before the drain starts")
    args = parser.parse_args(argv)
    port = int(os.environ.get("PORT", "5000"))
    print(f"drain: SIGTERM to process {args.pid} in {args.settle:g} s, once endpoints have dropped the pod", flush=True)
    time.sleep(args.settle)
    os.kill(args.pid, signal.SIGTERM)
    deadline = time.monotonic() + drain_seconds() + CUT_WAIT_SECONDS
    print(f"drain: SIGTERM sent; waiting up to {deadline - time.monotonic():g} s for the server to stop", flush=True)
    while server_status(port) is not None and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
