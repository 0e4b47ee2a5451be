"""The upstream client sends a plan as it is: only framing and the credential are added."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.config import Credential, Upstream
from gateway.core.errors import UpstreamError, UpstreamTimeout
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
