"""The listener on real sockets: a `Listener` around a tiny aiohttp app on 127.0.0.1, and
clients that misbehave the way slow and hostile ones do.

Every wait here is on an event (a counter the listener calls, a request reaching the app,
the connection closing), never a sleep raced against a timer: the timers under test are a
fraction of a second, and the ones that must not fire are a minute long.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

import gateway.listener as listener_module
from gateway.config import Address
from gateway.core.errors import GatewayError
from gateway.listener import ConnectionLimits, Listener, client_of
from gateway.listener.connection import Connection

BIG = 8 << 20          # a tool response of 8 MiB
WAIT_S = 10            # how long an event may take before the test fails
NEVER_S = 60.0         # a timer that must not be the one that fires
LIMITS = ConnectionLimits(max_connections=8, header_timeout_s=0.2, idle_timeout_s=NEVER_S,
                          max_headers=32, max_header_bytes=8190, send_timeout_s=NEVER_S)


@dataclass
class Counted:
    """What the listener counted, as events a test can wait on."""

    turned_away: asyncio.Event = field(default_factory=asyncio.Event)
    slow_head: asyncio.Event = field(default_factory=asyncio.Event)
    send_timed_out: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)   # a counted one closed


@dataclass
class Site:
    listener: Listener
    counted: Counted
    arrived: asyncio.Event     # a request reached /hold, /later or /read
    release: asyncio.Event     # lets /hold and /later answer

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.listener.port)

    def heads_timed(self) -> int:
        """Connections whose request-head timer is running."""
        return sum(h._head_timer is not None for h in self.listener._open)


def tiny_app(arrived: asyncio.Event, release: asyncio.Event) -> web.Application:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * BIG)

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(text=str(len(await request.read())))

    async def read(request: web.Request) -> web.StreamResponse:
        arrived.set()
        return web.Response(text=str(len(await request.read())))

    async def hold(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text="held")

    async def later(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    app.router.add_post("/read", read)
    app.router.add_get("/hold", hold)
    app.router.add_post("/later", later)
    return app


def refused(request: BaseRequest, error: GatewayError) -> str:
    return "req_refused"


@asynccontextmanager
async def site(limits: ConnectionLimits = LIMITS) -> AsyncIterator[Site]:
    counted = Counted()
    arrived, release = asyncio.Event(), asyncio.Event()
    runner = web.AppRunner(tiny_app(arrived, release), handle_signals=False)
    await runner.setup()
    listener = Listener(runner, Address("127.0.0.1", 0), limits, refused,
                        turned_away=counted.turned_away.set, slow_head=counted.slow_head.set,
                        send_timed_out=counted.send_timed_out.set)
    uncount = listener.closed

    def closed(handler: Any) -> None:
        uncount(handler)
        counted.closed.set()

    listener.closed = closed  # type: ignore[method-assign]
    await listener.start()
    try:
        yield Site(listener, counted, arrived, release)
    finally:
        release.set()
        await listener.stop()
        await runner.cleanup()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ")[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(65536), WAIT_S) == b""
    except ConnectionResetError:
        return True


GET_OK = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
PARTIAL = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: "


# ---- the head timer -------------------------------------------------------------------------

async def test_a_head_that_never_ends_is_cut_off() -> None:
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(PARTIAL)
        await asyncio.wait_for(s.counted.slow_head.wait(), WAIT_S)
        assert await closed(reader)
        writer.close()


@pytest.mark.parametrize("first", [
    GET_OK,
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nab\r\n\r\ncd\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\n\r\n\r\n\r\n0\r\n\r\n"], ids=["get", "content_length", "chunked"])
async def test_a_partial_head_behind_a_complete_request_is_cut_off(first: bytes) -> None:
    """Sent together with a complete request, a partial head still gets the head timeout,
    not the idle timeout (a minute here)."""
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(first + PARTIAL)
        assert (await response(reader))[0] == 200
        await asyncio.wait_for(s.counted.slow_head.wait(), WAIT_S)
        assert await closed(reader)
        writer.close()


async def test_a_partial_head_sent_while_a_request_is_handled_is_cut_off() -> None:
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(s.arrived.wait(), WAIT_S)
        writer.write(PARTIAL)
        await asyncio.wait_for(s.counted.slow_head.wait(), WAIT_S)
        assert await closed(reader)
        writer.close()


async def test_pipelined_requests_are_all_answered_and_time_no_head() -> None:
    """Bodies holding CRLFCRLF (a Content-Length one and a chunked one) are not taken for
    the end of a head: every request is answered, and no head timer is left running."""
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(GET_OK
                     + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
                       b"ab\r\n\r\ncd\r\n\r\n"
                     + b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"4\r\n\r\n\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
                     + GET_OK)
        bodies = [(await response(reader))[2] for _ in range(4)]
        assert bodies == [b"ok", b"12", b"7", b"ok"]
        assert s.heads_timed() == 0
        writer.write(GET_OK)   # the connection is still good
        assert (await response(reader))[2] == b"ok"
        assert not s.counted.slow_head.is_set()
        writer.close()


CHUNK = b"y" * 600_000 + b"\r\n\r\n" + b"y" * 99_996   # a CRLFCRLF past the reader's buffer


@pytest.mark.parametrize("burst", [
    GET_OK * 40,   # more than aiohttp queues at once: the rest waits for room
    b"POST /later HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n0\r\n\r\n" + GET_OK * 2,
    # a body its reader cannot buffer (the app reads it late): the parser pauses inside it
], ids=["queue_full", "reader_full"])
async def test_requests_held_back_while_the_parser_pauses_are_all_answered(
        burst: bytes) -> None:
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(burst)
        if b"/later" in burst:
            await asyncio.wait_for(s.arrived.wait(), WAIT_S)
            s.release.set()
        for _ in range(burst.count(b" HTTP/1.1\r\n")):
            assert (await response(reader))[0] == 200
        assert s.heads_timed() == 0
        assert not s.counted.slow_head.is_set()
        writer.close()


async def test_a_body_that_arrives_slowly_runs_no_head_timer() -> None:
    """Body bytes are the body timeout's business; the head timer starts again with the
    first byte after the body, even when it comes in the same read as the body's end."""
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12\r\n\r\n")
        await asyncio.wait_for(s.arrived.wait(), WAIT_S)
        assert s.heads_timed() == 0
        writer.write(b"7890" + PARTIAL)
        assert (await response(reader))[2] == b"10"
        await asyncio.wait_for(s.counted.slow_head.wait(), WAIT_S)
        assert await closed(reader)
        writer.close()


@pytest.mark.parametrize("request_", [
    b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
    b"Content-Length: 3\r\n\r\nabc",
], ids=["without_body", "with_body"])
async def test_an_upgrade_request_is_answered_and_the_connection_closed(
        request_: bytes) -> None:
    """The gateway upgrades to nothing, and aiohttp stops parsing after an upgrade request
    (or, with a body, goes on where this listener cannot follow): the connection ends with
    the answer, whatever follows it."""
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(request_ + GET_OK + PARTIAL)
        assert (await response(reader))[0] == 200
        assert await closed(reader)
        writer.close()


# ---- the connection caps --------------------------------------------------------------------

async def held_connections(s: Site, n: int) -> list[asyncio.StreamWriter]:
    """`n` connections, each known to the listener (each has had an answer)."""
    writers = []
    for _ in range(n):
        reader, writer = await s.connect()
        writer.write(GET_OK)
        assert (await response(reader))[0] == 200
        writers.append(writer)
    return writers


async def close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
        await writer.wait_closed()


async def turned_away(s: Site) -> dict[str, Any]:
    reader, writer = await s.connect()
    writer.write(GET_OK)
    status, headers, body = await response(reader)
    await close([writer])
    assert status == 503
    assert headers["retry-after"] == "1"
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert headers["x-request-id"] == error["request_id"]
    return error


async def test_connections_past_the_cap_get_503_over_capacity() -> None:
    async with site(ConnectionLimits(**{**LIMITS.__dict__, "max_connections": 2})) as s:
        held = await held_connections(s, 2)
        error = await turned_away(s)
        assert error["code"] == "over_capacity"
        assert error["request_id"].startswith("req_")
        assert s.counted.turned_away.is_set()
        await close(held[:1])
        await asyncio.wait_for(s.counted.closed.wait(), WAIT_S)   # the server saw it
        held += await held_connections(s, 1)   # room again
        await close(held)


async def test_refused_connections_linger_only_so_many_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refused connection is left open a moment to read its 503, and holds an open file
    meanwhile: past `MAX_LINGERING` of them, one is closed as soon as its answer is out."""
    monkeypatch.setattr(listener_module, "MAX_LINGERING", 2)
    async with site(ConnectionLimits(**{**LIMITS.__dict__, "max_connections": 1})) as s:
        held = await held_connections(s, 1)
        refused = [await s.connect() for _ in range(5)]   # none of them closes its end
        for reader, _ in refused:
            status, headers, _ = await response(reader)
            assert (status, headers["connection"]) == (503, "close")
        # The last three were closed at once; the first two linger (LINGER_S).
        assert [await asyncio.wait_for(reader.read(), 0.5) == b"" for reader, _ in
                refused[2:]] == [True] * 3
        assert s.listener._lingering == 2
        await close([w for _, w in refused] + held)


async def test_one_client_is_capped_below_the_port() -> None:
    limits = ConnectionLimits(**{**LIMITS.__dict__, "max_connections_per_client": 2})
    async with site(limits) as s:
        held = await held_connections(s, 2)
        assert (await turned_away(s))["code"] == "over_capacity"
        assert s.listener.open_connections == 2 < limits.max_connections
        await close(held[:1])
        await asyncio.wait_for(s.counted.closed.wait(), WAIT_S)
        held += await held_connections(s, 1)   # the client's room is back
        await close(held)


@pytest.mark.parametrize(("peer", "client"), [
    (("127.0.0.1", 5000), "loopback"), (("127.0.0.2", 5000), "loopback"),
    (("::1", 5000, 0, 0), "loopback"), (("::ffff:127.0.0.1", 5000, 0, 0), "loopback"),
    (("10.0.0.7", 5000), "10.0.0.7"), (("::ffff:10.0.0.7", 5000, 0, 0), "10.0.0.7"),
    (("fd00::7", 5000, 0, 0), "fd00::7"), ("/run/toolgate.sock", "/run/toolgate.sock")])
def test_every_loopback_address_is_one_client(peer: Any, client: str) -> None:
    """Whoever shares the host can pick any 127/8 source address; an address of its own
    is one client."""
    assert client_of(peer) == client


# ---- the send timeout -----------------------------------------------------------------------

def unread_socket() -> socket.socket:
    """A client with a tiny receive window, as one that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def test_a_client_that_never_reads_is_aborted_and_its_response_dropped() -> None:
    loop = asyncio.get_running_loop()
    async with site(ConnectionLimits(**{**LIMITS.__dict__, "send_timeout_s": 0.2})) as s:
        with unread_socket() as sock:
            await loop.sock_connect(sock, ("127.0.0.1", s.listener.port))
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(s.counted.send_timed_out.wait(), WAIT_S)
            received = 0
            with suppress(ConnectionResetError):
                while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), WAIT_S):
                    received += len(chunk)
            assert received < BIG
        assert s.listener.open_connections == 0


async def test_a_client_that_reads_gets_a_large_response_whole() -> None:
    async with site(ConnectionLimits(**{**LIMITS.__dict__, "send_timeout_s": 5.0})) as s:
        reader, writer = await s.connect()
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await response(reader)
        assert (status, len(body)) == (200, BIG)
        assert not s.counted.send_timed_out.is_set()
        writer.close()


# ---- the cost of tracking ---------------------------------------------------------------------

@pytest.fixture
def feeds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many reads from the socket the connections got, and how many calls into
    aiohttp's parser."""
    counts = {"reads": 0, "feeds": 0}
    read, feed = Connection.data_received, RequestHandler.data_received

    def counted_read(self: Connection, data: bytes) -> None:
        counts["reads"] += bool(data)   # (b"" is aiohttp resuming its parser)
        read(self, data)

    def counted_feed(self: RequestHandler, data: bytes) -> None:
        counts["feeds"] += 1
        feed(self, data)

    monkeypatch.setattr(Connection, "data_received", counted_read)
    monkeypatch.setattr(RequestHandler, "data_received", counted_feed)
    return counts


@pytest.mark.parametrize("stream", [
    b"\r\n\r\n" * 250_000 + GET_OK,   # empty lines before a request: dropped, never fed
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x\r\n" % 1_000_000 + b"\r\n\r\n" * 250_000 + b"\r\n0\r\n\r\n",  # a body of CRLFCRLFs
], ids=["empty_lines", "chunked_body"])
async def test_crlfcrlf_streams_cost_a_few_parser_calls_per_read(
        stream: bytes, feeds: dict[str, int]) -> None:
    """Fed one piece per CRLFCRLF, a megabyte of them would be 250,000 calls into the
    parser on the event loop; it is a few per read."""
    async with site() as s:
        reader, writer = await s.connect()
        writer.write(stream)
        status, _, body = await response(reader)
        assert status == 200 and body in (b"ok", b"1000000")
        assert feeds["feeds"] <= feeds["reads"] * 16, feeds   # untracked, it was ~10,000x
        writer.close()
