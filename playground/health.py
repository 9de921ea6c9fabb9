"""What the page says about the server: its `/health-check` status, or why it cannot be asked.

Each state gets one sentence a person can act on; only READY and BUSY let a take start (BUSY: the
take waits and retries, which the page says)."""

from __future__ import annotations

from typing import Any

HINT = "Start one with `make serve` (or `make playground`, which starts its own), or give the playground its URL."
SAY = {
    "READY": "Ready.",
    "BUSY": "Busy: every prediction slot is taken. A new take waits for a free one and retries.",
    "STARTING": "Starting: the server is loading the model. Generate works once it is ready.",
}


def describe(url: str, health: dict[str, Any] | None, problem: str | None = None) -> dict[str, Any]:
    """`{status, ready, message}` for the page; `problem` when the server could not be asked at all."""
    if health is None:
        return {"status": "UNREACHABLE", "ready": False, "message": f"{problem}. {HINT}"}
    status = str(health.get("status", "UNKNOWN"))
    if status in SAY:
        message = SAY[status]
    elif status == "SETUP_FAILED":
        logs = str((health.get("setup") or {}).get("logs") or "").strip().splitlines()[-8:]
        message = (
            f"The Cog server at {url} failed its setup: the model did not load, so it cannot predict. "
            "Fix the cause and restart it." + ("\nThe end of its setup log:\n" + "\n".join(logs) if logs else "")
        )
    else:
        message = f"The Cog server at {url} says it is {status}: predictions would fail. Restart it."
    return {"status": status, "ready": status in ("READY", "BUSY"), "message": message}
