"""The playground's HTTP routes: the page, and a small JSON API the page calls (coglet sends no CORS headers).

The browser never talks to the Cog server: this process does, so the page works against a server on
any host, and the server's webhooks have somewhere to go."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from playground import health
from playground.code import request_code
from playground.cog_client import CogUnreachable
from playground.cog_process import CogProcess
from playground.service import Playground
from playground.takes import Take

STATIC = Path(__file__).parent / "static"


def view(take: Take, server_url: str) -> dict[str, Any]:
    """What the page shows of a take (its file as a URL of ours, never the data URI)."""
    progress = take.progress()
    seed = take.seed()
    ready = take.file is not None
    return {
        "id": take.id,
        "status": take.status,
        "logs": take.logs,
        "progress": {"done": progress[0], "total": progress[1]} if progress else None,
        "seed": seed,
        "error": take.error,
        "field_errors": take.field_errors,
        "notice": take.notice,
        "file_url": f"/api/takes/{take.id}/file" if ready else None,
        "file_name": take.file.name if take.file else None,
        "code": request_code(server_url, take.input, take.file_names, seed) if ready else None,
    }


def create_app(playground: Playground, process: CogProcess | None = None) -> Starlette:
    """The app for one playground; `process` when it started the server itself (its exit is reported)."""
    url = playground.cog.url

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def config(request: Request) -> Response:
        return JSONResponse({"server_url": url, "live_updates": playground.webhook_url is not None})

    async def health_check(request: Request) -> Response:
        exited = process.exited() if process else None
        if exited:
            return JSONResponse({"status": "EXITED", "ready": False, "message": exited})
        try:
            return JSONResponse(health.describe(url, await playground.cog.health()))
        except CogUnreachable as error:
            return JSONResponse(health.describe(url, None, str(error)))

    async def schema(request: Request) -> Response:
        try:
            response = await playground.cog.openapi()
        except CogUnreachable as error:
            return JSONResponse({"message": str(error)}, status_code=502)
        if response.status_code != 200:
            message = f"{url}/openapi.json answered {response.status_code}: the server has no schema to build the form"
            return JSONResponse({"message": message}, status_code=502)
        return Response(response.content, media_type="application/json")

    async def start(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            inputs, file_names = dict(body["input"]), dict(body.get("file_names") or {})
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"message": f"a take needs a JSON body with `input`: {error}"}, status_code=400)
        return JSONResponse(view(playground.start(inputs, file_names), url), status_code=201)

    def found(request: Request) -> Take | None:
        return playground.takes.get(request.path_params["take_id"])

    async def show(request: Request) -> Response:
        take = found(request)
        return JSONResponse(view(take, url)) if take else gone(request)

    async def cancel(request: Request) -> Response:
        take = found(request)
        if take is None:
            return gone(request)
        try:
            problem = await playground.cancel(take)
        except CogUnreachable as error:
            problem = str(error)
        return JSONResponse({**view(take, url), "cancel_problem": problem})

    async def file(request: Request) -> Response:
        take = found(request)
        if take is None or take.file is None:
            return gone(request)
        media = "audio/mpeg" if take.file.suffix == ".mp3" else "audio/wav"
        return FileResponse(take.file, media_type=media, filename=take.file.name)

    async def webhook(request: Request) -> Response:
        playground.webhook(request.path_params["take_id"], json.loads(await request.body()))
        return Response(status_code=200)

    def gone(request: Request) -> Response:
        message = f"no take {request.path_params['take_id']} here: the playground was restarted, or forgot it"
        return JSONResponse({"message": message}, status_code=404)

    async def failure(request: Request, error: Exception) -> Response:
        # the page shows this text; the traceback goes to the playground's own log, not to the browser
        return JSONResponse({"message": f"the playground failed: {type(error).__name__}: {error}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await playground.cancel_all()
        await playground.cog.close()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", index),
            Route("/api/config", config),
            Route("/api/health", health_check),
            Route("/api/schema", schema),
            Route("/api/takes", start, methods=["POST"]),
            Route("/api/takes/{take_id}", show),
            Route("/api/takes/{take_id}/cancel", cancel, methods=["POST"]),
            Route("/api/takes/{take_id}/file", file),
            Route("/api/webhook/{take_id}", webhook, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        exception_handlers={Exception: failure},
    )
