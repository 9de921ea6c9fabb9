"""`python -m musicgen_cog.commands.serve [--host H] [--upload-url U]`: the Cog server, as make and deploy/ run it.

It is `python -m cog.server.http` (coglet) with the stop signals taken from coglet first
(serving/server_signals.py): SIGTERM or SIGHUP drains, SIGINT or a second signal cuts at once, a
server with nothing to drain stops at once, and it stops when the process that started it ends.
"""

from __future__ import annotations

import logging
import runpy
import sys

from ..serving.server_signals import block_stop_signals, take_stop_signals

# coglet would then set SIGTERM to SIG_IGN, and the kernel discards an ignored signal even while blocked
REFUSED = "--await-explicit-shutdown"


def main() -> None:
    block_stop_signals()  # before coglet starts a thread: they all inherit the mask
    if any(argument.startswith(REFUSED) for argument in sys.argv[1:]):
        raise SystemExit(f"{REFUSED} would hide SIGTERM from this server; it drains on SIGTERM without it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    take_stop_signals()
    runpy.run_module("cog.server.http", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
