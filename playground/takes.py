"""A take: one prediction the page asked for, as the Cog server's updates describe it.

The server's webhooks (or one sync answer) carry status, logs, output and error; a take keeps the
latest of each and reads from its logs what the page shows beside them: seed, step progress, file name."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playground.api_errors import input_error_field

SEED = re.compile(r"^Using seed (\d+)$", re.MULTILINE)
PROGRESS = re.compile(r"^generation: (\d+)/(\d+) steps", re.MULTILINE)
WROTE = re.compile(r"^wrote (musicgen-[\w.-]+\.(?:wav|mp3)) ", re.MULTILINE)
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# how far along each status is: updates can arrive out of order (a webhook before the 202 that accepted it)
RANK = {"waiting": 0, "starting": 1, "processing": 2}


@dataclass
class Take:
    """What the playground knows of one prediction: what was asked, and the server's latest word on it."""

    id: str
    input: dict[str, Any]
    file_names: dict[str, str] = field(default_factory=dict)  # file inputs: the name of the file the user gave
    # waiting: not yet accepted by the server (busy, retrying); starting: accepted; then processing, then terminal
    status: str = "waiting"
    logs: str = ""
    error: str | None = None
    field_errors: dict[str, str] = field(default_factory=dict)
    notice: str | None = None
    output: Any = None
    file: Path | None = None
    cancel_requested: bool = False
    heard_at: float | None = None  # monotonic time of the server's latest update

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def apply(self, update: dict[str, Any]) -> None:
        """Take a webhook body or a sync answer; a late non-terminal update never undoes a terminal one."""
        if self.done:
            return
        self.heard_at = time.monotonic()
        status = update.get("status") or self.status
        if status in TERMINAL or RANK.get(status, 0) > RANK.get(self.status, 0):
            self.status = status
        self.logs = update.get("logs") or self.logs
        if update.get("output") is not None:
            self.output = update["output"]
        self.notice = None  # the server answers again: a note about waiting for it no longer holds
        if self.status == "failed":
            self.fail(update.get("error") or "the prediction failed and the server gave no reason")

    def fail(self, message: str, field_errors: dict[str, str] | None = None) -> None:
        self.status = "failed"
        self.error = message
        self.field_errors = field_errors if field_errors is not None else input_error_field(message)
        self.notice = None

    def seed(self) -> int | None:
        """The seed the server used, as it logs it (`Using seed N`)."""
        found = SEED.search(self.logs)
        return int(found.group(1)) if found else None

    def progress(self) -> tuple[int, int] | None:
        """Decoding steps done and in all, from the latest `generation: N/M steps` line."""
        found = PROGRESS.findall(self.logs)
        return (int(found[-1][0]), int(found[-1][1])) if found else None

    def file_name(self) -> str:
        """The name the server gave the file (its log says `wrote <name>`), else one with the seed in it."""
        found = WROTE.search(self.logs)
        if found:
            return found.group(1)
        return f"musicgen-seed{self.seed()}.{self.input.get('output_format', 'wav')}"
