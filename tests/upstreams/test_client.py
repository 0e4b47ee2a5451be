"""The upstream client sends a plan as it is: only framing and the credential are added."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import Credential, Upstream
from gateway.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.core.outbound import OutboundPlan
from gateway.upstreams.client import CredentialError, Upstreams, read_credential
from tests.support import Recorder


@pytest.fixture
async def upstreams(recorder: tuple[Recorder, str]) -> AsyncIterator[Upstreams]:
    client = Upstreams({"api": Upstream("api", recorder[1], Credential(
        "X-Api-Key", "Key ", env="API_KEY"))}, {"API_KEY": "k3y"}, max_response_bytes=1000)
    await client.start()
    yield client
    await client.close()


def plan(path: str = "/v1/x", body: bytes = b'{"a":1}',
         headers: dict[str, str] | None = None) -> OutboundPlan:
    return OutboundPlan("api", "POST", path, "q=1",
                        headers if headers is not None else
                        {"Content-Type": "application/json", "X-Request-Id": "req_1"}, body)


async def test_exactly_the_plan_plus_framing_and_credential(
        upstreams: Upstreams, recorder: tuple[Recorder, str]) -> None:
    resp = await upstreams.send(plan(), 1000)
    assert resp.status == 201
    seen = recorder[0]
    assert seen.seen[-1].raw_path == "/v1/x?q=1"
    assert seen.bodies[-1] == b'{"a":1}'
    assert seen.headers() == {"content-type": "application/json", "x-request-id": "req_1",
                              "x-api-key": "Key k3y", "host": recorder[1].split("//")[1],
                              "content-length": "7"}
    assert upstreams.credential_header("api") == "X-Api-Key"


async def test_no_default_headers_are_added(upstreams: Upstreams,
                                            recorder: tuple[Recorder, str]) -> None:
    await upstreams.send(plan(body=b"", headers={}), 1000)
    assert set(recorder[0].headers()) == {"x-api-key", "host", "content-length"}


async def test_a_timeout_is_504_and_too_large_an_answer_502(
        upstreams: Upstreams, recorder: tuple[Recorder, str]) -> None:
    with pytest.raises(UpstreamTimeout):
        await upstreams.send(plan("/v1/hang"), 50)
    recorder[0].release.set()
    with pytest.raises(UpstreamError):
        await upstreams.send(plan("/v1/" + "x" * 2000), 1000)  # echoed path > 1000 bytes


def test_a_missing_credential_is_an_error_at_start() -> None:
    up = Upstream("api", "http://127.0.0.1:9", Credential("Authorization", env="NOPE"))
    with pytest.raises(CredentialError):
        read_credential(up, {})


class Dropper:
    """An upstream that reads each request head, then closes the connection without an
    answer; with `then_stop`, it also stops listening, so a second attempt cannot connect."""

    def __init__(self, then_stop: bool) -> None:
        self.then_stop = then_stop
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        if self.then_stop and self.server is not None:
            self.server.close()
        writer.close()


@pytest.mark.parametrize("then_stop", [False, True])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
async def test_a_call_is_sent_once_and_never_resent(method: str, then_stop: bool) -> None:
    """aiohttp resends an idempotent request whose connection broke; the upstream may have
    run it. Sent once, the broken call is an upstream error, and never 'unsent'."""
    dropper = Dropper(then_stop)
    dropper.server = await asyncio.start_server(dropper.serve, "127.0.0.1", 0)
    port = dropper.server.sockets[0].getsockname()[1]
    client = Upstreams({"api": Upstream("api", f"http://127.0.0.1:{port}", None)}, {},
                       max_response_bytes=1000)
    await client.start()
    try:
        with pytest.raises(UpstreamError) as raised:
            await client.send(OutboundPlan("api", method, "/v1/x", "", {}, b""), 2000)
        assert not isinstance(raised.value, UpstreamUnreachable)
        assert dropper.requests == 1
    finally:
        await client.close()
        dropper.server.close()


async def test_an_upstream_not_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # free, and nothing listens on it
    client = Upstreams({"api": Upstream("api", f"http://127.0.0.1:{port}", None)}, {},
                       max_response_bytes=1000)
    await client.start()
    try:
        with pytest.raises(UpstreamUnreachable):
            await client.send(OutboundPlan("api", "PUT", "/v1/x", "", {}, b"{}"), 2000)
    finally:
        await client.close()


# ---- redirects, compressed answers and pools (THREAT_MODEL U3, D2, D3) --------------------

class Site:
    """A loopback upstream built for one test: `routes` maps a path to a handler; every
    request that arrives is recorded (method and path) before it is handled."""

    def __init__(self, routes: dict[str, Callable[[web.Request], Awaitable[web.Response]]]
                 ) -> None:
        self.routes = routes
        self.seen: list[str] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(f"{request.method} {request.raw_path}")
        return await self.routes[request.path](request)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def __aenter__(self) -> Site:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app)
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()


@asynccontextmanager
async def started(upstreams: dict[str, Upstream], environ: dict[str, str] | None = None,
                  max_response_bytes: int = 1000) -> AsyncIterator[Upstreams]:
    client = Upstreams(upstreams, environ or {}, max_response_bytes=max_response_bytes)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["another host", "the same host"])
async def test_a_redirect_is_passed_back_and_never_followed(status: int, where: str) -> None:
    """U3: following a redirect would send the call, credential included, wherever the
    upstream (or whoever answers for it) points: the answer goes back as it is."""
    async def stolen(_: web.Request) -> web.Response:
        return web.json_response({"stolen": True})

    async with Site({"/v1/stolen": stolen}) as elsewhere:
        target = {"another host": f"{elsewhere.url}/v1/stolen",
                  "the same host": "/v1/stolen"}[where]

        async def redirect(_: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": target})

        async with Site({"/v1/refunds": redirect, "/v1/stolen": stolen}) as site, started(
                {"api": Upstream("api", site.url, Credential("X-Api-Key", env="API_KEY"))},
                {"API_KEY": "k3y"}) as client:
            resp = await client.send(OutboundPlan("api", "POST", "/v1/refunds", "",
                                                  {"Content-Type": "application/json"},
                                                  b'{"amount":5}'), 2000)
            assert resp.status == status
            assert resp.headers["Location"] == target
            assert site.seen == ["POST /v1/refunds"]
        assert elsewhere.seen == []


def gzipped(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    return packer.compress(data) + packer.flush()


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped: about a thousandth of that on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(packer.compress(block) for _ in range(size >> 20)), packer.flush()])


BOMB_BYTES = 64 << 20


async def test_a_compressed_answer_is_decompressed_and_bounded_after_decompression() -> None:
    """D2: `max_response_bytes` counts the body the agent would get, not the bytes on the
    wire: a gzip bomb (64 KiB that inflate to 64 MiB) is a 502, read no further than the
    limit."""
    bomb = gzip_bomb(BOMB_BYTES)
    small = b'{"refund_id": "re_1"}' + b" " * 900

    def gzip_answer(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(_: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Content-Encoding": "gzip",
                                                    "Content-Type": "application/json"})
        return answer

    async with Site({"/v1/small": gzip_answer(gzipped(small)),
                     "/v1/bomb": gzip_answer(bomb)}) as site, started(
            {"api": Upstream("api", site.url, None)}) as client:
        assert len(bomb) < 1000 * 100 and len(small) < 1000
        resp = await client.send(OutboundPlan("api", "GET", "/v1/small", "", {}, b""), 2000)
        assert resp.body == small  # decompressed, and the encoding is not passed back
        assert "Content-Encoding" not in resp.headers
        tracemalloc.start()
        try:
            with pytest.raises(UpstreamError) as raised:
                await client.send(OutboundPlan("api", "GET", "/v1/bomb", "", {}, b""), 5000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "larger than 1000 bytes" in raised.value.message
        assert peak < BOMB_BYTES // 8, f"{peak} bytes held while reading the bomb"


async def test_each_upstream_has_its_own_pool() -> None:
    """D3: a hung upstream exhausts only its own connections: with its one connection
    taken, its next call waits (and times out, unsent), while another upstream answers."""
    arrived, opened = asyncio.Event(), asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        arrived.set()
        await opened.wait()
        return web.json_response({"late": True})

    async def fine(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async with Site({"/v1/hang": hang}) as hung, Site({"/v1/ok": fine}) as healthy, started(
            {"hung": Upstream("hung", hung.url, None, max_connections=1),
             "healthy": Upstream("healthy", healthy.url, None, max_connections=1)}
            ) as client:
        first = asyncio.create_task(
            client.send(OutboundPlan("hung", "GET", "/v1/hang", "", {}, b""), 10_000))
        async with asyncio.timeout(10):
            await arrived.wait()  # the hung upstream now holds the one connection
        with pytest.raises(UpstreamTimeout):
            await client.send(OutboundPlan("hung", "GET", "/v1/hang", "", {}, b""), 200)
        assert hung.seen == ["GET /v1/hang"], "the second call waited for the pool"
        resp = await client.send(OutboundPlan("healthy", "GET", "/v1/ok", "", {}, b""), 5000)
        assert resp.status == 200
        opened.set()
        assert (await first).status == 200
