"""`python -m musicgen_cog.commands.health ready|started|alive`: a probe of coglet's /health-check.

coglet answers /health-check with HTTP 200 in every state and says the state in its JSON body
(STARTING, READY, BUSY, SETUP_FAILED, UNHEALTHY, DEFUNCT), so an HTTP probe cannot tell them
apart; this exits 0 when the state passes the named check and 1 otherwise, for exec probes.

    ready    READY: send it predictions (BUSY, every slot in use, would only answer 409)
    started  READY or BUSY: setup is over (a startup probe)
    alive    anything but UNHEALTHY or DEFUNCT (a worker that died: coglet stays up and fails
             every prediction), and the server answers at all
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

CHECKS = {
    "ready": lambda status: status == "READY",
    "started": lambda status: status in ("READY", "BUSY"),
    "alive": lambda status: status not in ("UNHEALTHY", "DEFUNCT"),
}
TIMEOUT = 5.0  # seconds; coglet itself waits up to 10 s for a predictor's healthcheck()


def server_status(port: int) -> str | None:
    """The `status` of coglet's /health-check on this machine's `port`; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health-check", timeout=TIMEOUT) as response:
            return json.load(response)["status"]
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    status = server_status(int(os.environ.get("PORT", "5000")))
    print(status or "no answer")
    return 0 if status is not None and CHECKS[args[0]](status) else 1


if __name__ == "__main__":
    sys.exit(main())
