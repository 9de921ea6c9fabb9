"""The playground's side of a take: submit it (waiting out a busy server), follow it, cancel it, keep its file.

Updates arrive as the server's webhooks, or as one sync answer when no webhook address is known; a
watchdog asks the server's health meanwhile, so a server that goes away ends the take with a message."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from playground.api_errors import schema_errors
from playground.cog_client import CogClient, CogUnreachable
from playground.takes import Take

KEEP = 100  # takes (and their files) kept for the page's history; older ones are forgotten


class Playground:
    """All takes of this playground process, against one Cog server."""

    def __init__(
        self,
        cog: CogClient,
        webhook_url: str | None,
        folder: Path,
        busy_retry_s: float = 2.0,
        busy_give_up_s: float = 600.0,
        watch_s: float = 2.0,
        silent_s: float = 15.0,
    ):
        self.cog = cog
        self.webhook_url = webhook_url
        self.folder = folder
        self.busy_retry_s = busy_retry_s
        self.busy_give_up_s = busy_give_up_s
        self.watch_s = watch_s
        self.silent_s = silent_s
        self.takes: dict[str, Take] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, inputs: dict[str, Any], file_names: dict[str, str]) -> Take:
        """A new take, submitted and followed in the background; the page polls it."""
        take = Take(id=f"playground-{uuid.uuid4().hex}", input=inputs, file_names=file_names)
        self.takes[take.id] = take
        self._forget_old()
        task = asyncio.create_task(self._run(take))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return take

    async def _run(self, take: Take) -> None:
        try:
            if await self._submit(take) and self.webhook_url:
                await self._watch(take)
            if take.status == "succeeded":
                await self._save(take)
        except CogUnreachable as error:
            if not take.done or take.status == "succeeded":
                take.fail(f"{error}. Nothing came back for this take; generate again once the server answers.")
        except Exception as error:  # a take must end with a message, never spin: the page shows this one
            take.fail(f"the playground failed while following this take: {type(error).__name__}: {error}")
            raise

    async def _submit(self, take: Take) -> bool:
        """POST it, retrying while the server is busy (409) and saying so; True once the server has it."""
        body: dict[str, Any] = {"id": take.id, "input": take.input}
        # the page keeps each upload for reuse; here only its type is needed (for the code shown), not its bytes
        take.input = {
            name: str(value).split(",", 1)[0] + "," if name in take.file_names else value
            for name, value in take.input.items()
        }
        if self.webhook_url:
            body["webhook"] = f"{self.webhook_url}/{take.id}"
        give_up_at = time.monotonic() + self.busy_give_up_s
        attempt = 0
        while not take.cancel_requested:
            attempt += 1
            if self.webhook_url is None:  # sync: the server takes it now or answers 409 now
                take.status = "starting"
            response = await self.cog.predict(body, respond_async=self.webhook_url is not None)
            if response.status_code != 409:
                return await self._answered(take, response)
            take.status = "waiting"
            if time.monotonic() > give_up_at:
                take.fail(f"the server stayed busy (409, every slot taken) for {self.busy_give_up_s:.0f} s; try later")
                return False
            take.notice = (
                f"The server is busy: every prediction slot is taken (409). "
                f"Retrying every {self.busy_retry_s:g} s (attempt {attempt})."
            )
            await asyncio.sleep(self.busy_retry_s)
        take.status, take.notice = "canceled", None  # cancelled before the server ever took it
        return False

    async def _answered(self, take: Take, response: Any) -> bool:
        if response.status_code == 422:
            errors = schema_errors(response.json())
            take.fail("The server refused the input: " + "; ".join(errors.values()), errors)
            return False
        if response.status_code not in (200, 202):
            take.fail(f"the server answered {response.status_code}: {response.text[:500]}")
            return False
        take.notice = None
        take.apply(response.json())
        if take.cancel_requested:  # cancel was pressed while the request was on its way
            await self.cog.cancel(take.id)
        return True

    async def _watch(self, take: Take) -> None:
        """Until a terminal webhook: is the server still there, and do its updates reach us?"""
        while not take.done:
            await asyncio.sleep(self.watch_s)
            if take.done:
                return
            try:
                await self.cog.health()
            except CogUnreachable as error:
                take.fail(f"Lost the server during this take: {error}. Its result cannot arrive; generate again.")
                return
            silent = time.monotonic() - (take.heard_at or time.monotonic())
            if take.status == "starting" and silent > self.silent_s:
                take.notice = (
                    f"The server accepted this take {silent:.0f} s ago, but none of its updates has reached the "
                    f"playground at {self.webhook_url}. Restart the playground with PLAYGROUND_WEBHOOK_URL set "
                    "to an address of it that the server can reach."
                )

    async def _save(self, take: Take) -> None:
        output = take.output[0] if isinstance(take.output, list) and take.output else take.output
        if not isinstance(output, str):
            take.fail(f"the server reported success but sent no file (output: {output!r})")
            return
        if output.startswith("data:"):
            content = base64.b64decode(output.split(",", 1)[1])
        else:
            content = await self.cog.download(output)
        path = self.folder / take.id / take.file_name()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        take.file, take.output = path, None

    def webhook(self, take_id: str, update: dict[str, Any]) -> None:
        take = self.takes.get(take_id)
        if take is not None:
            take.apply(update)

    async def cancel(self, take: Take) -> str | None:
        """Ask the server to cancel the take; a message when it could not be (the take stays as it is)."""
        take.cancel_requested = True
        if take.done:
            return None
        response = await self.cog.cancel(take.id)
        if response.status_code == 404 and take.status == "waiting":
            return None  # not on the server: the retry loop stops instead
        if response.status_code != 200 and not take.done:
            return f"the server did not cancel it: it answered {response.status_code} {response.text[:200]}"
        return None

    async def cancel_all(self) -> None:
        """Cancel the takes still running on the server: once this playground stops, nobody can see them."""
        for take in list(self.takes.values()):
            if not take.done:
                with contextlib.suppress(CogUnreachable):
                    await self.cancel(take)

    def _forget_old(self) -> None:
        for take_id in list(self.takes)[:-KEEP]:
            if self.takes[take_id].done:
                shutil.rmtree(self.folder / take_id, ignore_errors=True)
                del self.takes[take_id]
