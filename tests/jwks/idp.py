"""A fake identity provider's JWKS endpoint — the one fake these tests need: the IdP is
outside the product. `FakeIdp.fetch` stands in for the HTTP GET (unit tests of the cache);
`idp_server` serves the same documents on loopback (tests of the fetch and the runtime)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.devtokens import DevKey
from gateway.jwks import JwksFetchError


def jwks(*keys: DevKey) -> dict[str, Any]:
    return {"keys": [k for key in keys for k in key.jwks["keys"]]}


@dataclass
class FakeIdp:
    """Answers each fetch with `document` (a dict, raw bytes, or an exception to raise —
    a `CancelledError` too, as a library's bug might raise one);
    with a `script`, the next fetches take its answers in order (the last one stays). With
    `gate` set, a fetch waits for it: a test holds a fetch in flight on an event."""

    document: dict[str, Any] | bytes | BaseException
    calls: int = 0
    gate: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    script: list[dict[str, Any] | bytes | BaseException] = field(default_factory=list)

    async def fetch(self) -> bytes:
        self.calls += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            self.document = self.script.pop(0)
        answer = self.document
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, bytes) else orjson.dumps(answer)

    def down(self) -> None:
        self.document = JwksFetchError("answered 503")


@dataclass
class IdpServer:
    """What the loopback endpoint serves: `document` at `/jwks`, with `status`; every GET
    counted in `hits`. `/redirect` answers 302 to `/jwks`."""

    document: dict[str, Any] | bytes
    status: int = 200
    hits: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.path == "/redirect":
            raise web.HTTPFound("/jwks")
        body = self.document if isinstance(self.document, bytes) else \
            orjson.dumps(self.document)
        return web.Response(body=body, status=self.status, content_type="application/json")


@asynccontextmanager
async def idp_server(document: dict[str, Any] | bytes) -> AsyncIterator[IdpServer]:
    idp = IdpServer(document)
    app = web.Application()
    app.router.add_get("/{tail:.*}", idp.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    idp.url = str(server.make_url("/jwks"))
    try:
        yield idp
    finally:
        await server.close()
