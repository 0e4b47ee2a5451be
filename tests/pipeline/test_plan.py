"""Stage `plan`: the exact outbound request, with agent headers as an allow-list and the
gateway's own forwarding headers."""

from __future__ import annotations

import pytest

from gateway.core.errors import InvalidArguments
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.idempotency import idempotency
from gateway.pipeline.plan import plan
from gateway.runtime import Runtime
from tests.support import context

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_plan_is_the_spec_s_request_with_allowed_headers(
        rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "POST", "/echo/items", token=agent_token,
                  body={"name": "a", "count": 1}, request_id="req_plan",
                  headers={"Idempotency-Key": "k-plan", "traceparent": TRACEPARENT,
                           "Accept": "application/json", "X-Custom": "listed",
                           "X-Forwarded-User": "admin", "X-Real-IP": "10.9.9.9",
                           "Forwarded": "for=1.2.3.4", "Cookie": "c=1", "Host": "evil",
                           "X-Other": "not listed"})
    await authenticate(ctx, rt)
    await idempotency(ctx, rt)
    await plan(ctx, rt)
    p = ctx.plan
    assert (p.upstream, p.method, p.path, p.query) == ("echo", "POST", "/v1/items", "")
    assert p.body == ctx.call.body
    assert dict(p.headers) == {
        "Content-Type": "application/json", "Accept": "application/json",
        "traceparent": TRACEPARENT, "X-Custom": "listed",
        "X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gateway.internal", "X-Request-Id": "req_plan",
        "Idempotency-Key": "k-plan"}


async def test_path_parameters_are_one_encoded_segment_and_the_query_is_kept(
        rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/items/a%20b%3Fc", token=agent_token, query="q=x%20y")
    await authenticate(ctx, rt)
    await idempotency(ctx, rt)
    await plan(ctx, rt)
    assert (ctx.plan.path, ctx.plan.query) == ("/v1/items/a%20b%3Fc", "q=x%20y")
    assert "Idempotency-Key" not in ctx.plan.headers  # the tool uses no keys


async def test_a_header_sent_twice_goes_out_once(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token,
                  headers=[("Accept", "text/html"), ("Accept", "*/*")])
    await authenticate(ctx, rt)
    await plan(ctx, rt)
    assert ctx.plan.headers["Accept"] == "text/html, */*"


async def test_a_header_that_is_not_text_is_refused(rt: Runtime, agent_token: str) -> None:
    """Bytes that are not UTF-8 reach the gateway as lone surrogates: they could be shown
    one way and sent another, so the call is refused before anything is planned."""
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token,
                  headers={"Accept-Language": "de\udcff\udcfe"})
    await authenticate(ctx, rt)
    with pytest.raises(InvalidArguments):
        await plan(ctx, rt)
