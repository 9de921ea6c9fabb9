"""The client's view of a server it cannot ask: each way of failing is one message naming server and cause."""

from __future__ import annotations

import asyncio
import http.server
import socket

import pytest

from playground.cog_client import CogClient, CogUnreachable
from tests.loopback import LoopbackServer, Quiet
from tests.playground.running import closed_port


class Hangs(Quiet, http.server.BaseHTTPRequestHandler):
    """Reads the request, then closes the connection without a word: a server dropping it."""

    def do_GET(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def health_error(url: str) -> str:
    async def ask() -> str:
        client = CogClient(url, timeout=5)
        try:
            with pytest.raises(CogUnreachable) as raised:
                await client.health()
        finally:
            await client.close()
        return str(raised.value)

    return asyncio.run(ask())


def test_nothing_listening():
    url = f"http://127.0.0.1:{closed_port()}"
    assert (
        health_error(url)
        == f"the Cog server at {url} could not be reached: nothing answers there (connection refused or no such host)"
    )


def test_a_dropped_connection():
    with LoopbackServer(Hangs) as dropping:
        assert health_error(dropping.url).endswith("could not be reached: the connection dropped before it answered")


def test_the_real_server(server):
    async def ask() -> tuple[dict, int]:
        client = CogClient(server.url)
        try:
            return await client.health(), (await client.openapi()).status_code
        finally:
            await client.close()

    health, schema_status = asyncio.run(ask())
    assert health["status"] in ("READY", "BUSY") and schema_status == 200
