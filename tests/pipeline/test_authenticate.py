"""Stage `authenticate`: the bearer token becomes the principal; the run id is the signed
claim, else the unsigned hint."""

from __future__ import annotations

import pytest

from gateway.core.errors import Unauthenticated
from gateway.devtokens import DevKey
from gateway.pipeline.authenticate import MAX_RUN_ID, authenticate
from gateway.runtime import Runtime
from tests.support import context

GET = ("GET", "/echo/items/abc")


async def test_a_valid_token_is_the_principal(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, *GET, token=agent_token)
    await authenticate(ctx, rt)
    assert (ctx.principal.sub, ctx.principal.tenant, ctx.principal.agent) == (
        "svc-agent", "acme", "support-bot")
    assert ctx.run_id is None


async def test_the_signed_run_claim_wins_over_the_header(rt: Runtime, dev_key: DevKey) -> None:
    token = dev_key.token("svc", tenant="acme", run_id="run-signed")
    ctx = context(rt, *GET, token=token, headers={"X-Agent-Run-Id": "run-header"})
    await authenticate(ctx, rt)
    assert ctx.run_id == "run-signed"


async def test_the_run_hint_is_used_and_bounded(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, *GET, token=agent_token, headers={"X-Agent-Run-Id": "r" * 500})
    await authenticate(ctx, rt)
    assert ctx.run_id == "r" * MAX_RUN_ID


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer ", "Bearer not.a.jwt"])
async def test_no_valid_token_is_401(rt: Runtime, authorization: str | None) -> None:
    ctx = context(rt, *GET, headers={"Authorization": authorization} if authorization else {})
    with pytest.raises(Unauthenticated) as info:
        await authenticate(ctx, rt)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert ctx.known_principal is None
