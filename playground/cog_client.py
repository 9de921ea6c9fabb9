"""The Cog server's public HTTP API, as the playground uses it: health, schema, predictions, cancel.

Every way of not reaching the server (nothing listening, no answer, a dropped connection) becomes one
exception whose message names the server and what happened, for the page to show as it is."""

from __future__ import annotations

from typing import Any

import httpx


class CogUnreachable(Exception):
    """The server could not be asked: the message says which server and why."""


def _reason(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "nothing answers there (connection refused or no such host)"
    if isinstance(error, httpx.TimeoutException):
        return "it did not answer in time"
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "the connection dropped before it answered"
    return f"{type(error).__name__}: {error}"


class CogClient:
    """One Cog server, by its base URL (`http://127.0.0.1:5000`, a `docker run` container, a deployment)."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(timeout=timeout)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as error:
            raise CogUnreachable(f"the Cog server at {self.url} could not be reached: {_reason(error)}") from error

    async def health(self) -> dict[str, Any]:
        response = await self._call("GET", "/health-check")
        if response.status_code != 200:
            raise CogUnreachable(f"{self.url}/health-check answered {response.status_code}: is this a Cog server?")
        return dict(response.json())

    async def openapi(self) -> httpx.Response:
        return await self._call("GET", "/openapi.json")

    async def predict(self, body: dict[str, Any], respond_async: bool) -> httpx.Response:
        """POST /predictions: async answers 202 at once; sync holds the connection until the end."""
        if respond_async:
            return await self._call("POST", "/predictions", json=body, headers={"Prefer": "respond-async"})
        return await self._call("POST", "/predictions", json=body, timeout=None)

    async def cancel(self, prediction_id: str) -> httpx.Response:
        return await self._call("POST", f"/predictions/{prediction_id}/cancel")

    async def download(self, url: str) -> bytes:
        """An output the server uploaded (`--upload-url`) instead of returning it as a data URI."""
        try:
            response = await self.http.get(url, timeout=120)
        except httpx.HTTPError as error:
            raise CogUnreachable(f"the output at {url} could not be fetched: {_reason(error)}") from error
        if response.status_code != 200:
            raise CogUnreachable(f"the output at {url} could not be fetched: it answered {response.status_code}")
        return response.content

    async def close(self) -> None:
        await self.http.aclose()
