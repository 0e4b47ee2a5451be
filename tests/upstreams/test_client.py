"""The upstream client sends a plan as it is: only framing and the credential are added."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

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
