"""Stage `authenticate`: the bearer token becomes the principal; the run id is the signed
claim, else the unsigned hint, which must be a run id by the same rule."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.errors import InvalidArguments, Unauthenticated
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
    """A hint over the bound is refused, not cut: cut, two runs would be one."""
    ctx = context(rt, *GET, token=agent_token, headers={"X-Agent-Run-Id": "r" * MAX_RUN_ID})
    await authenticate(ctx, rt)
    assert ctx.run_id == "r" * MAX_RUN_ID
    ctx = context(rt, *GET, token=agent_token,
                  headers={"X-Agent-Run-Id": "r" * (MAX_RUN_ID + 1)})
    with pytest.raises(InvalidArguments):
        await authenticate(ctx, rt)


async def test_no_hint_is_no_run(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, *GET, token=agent_token)
    await authenticate(ctx, rt)
    assert ctx.run_id is None


# A byte that is not UTF-8 reaches the stage as a lone surrogate (how aiohttp decodes it).
@pytest.mark.parametrize("hint", ["run-\udcff", "", "run\n1", "run\x7f", "run\u00a01",
                                  "run\u200b1", "r" * 500],
                         ids=lambda hint: repr(hint)[:16])
async def test_a_hint_that_is_not_a_run_id_is_400(rt: Runtime, agent_token: str,
                                                  hint: str) -> None:
    """The same rule as the claim. A lone surrogate reached the audit record, which could
    not hold it: a 500 and no decision record."""
    ctx = context(rt, *GET, token=agent_token, headers={"X-Agent-Run-Id": hint})
    with pytest.raises(InvalidArguments) as info:
        await authenticate(ctx, rt)
    assert info.value.status == 400
    assert not hint or hint not in info.value.message
    assert ctx.principal.sub == "svc-agent"  # the refusal is recorded with its caller
    assert ctx.run_id is None


async def test_a_hint_is_not_read_when_the_token_has_the_claim(rt: Runtime,
                                                                dev_key: DevKey) -> None:
    token = dev_key.token("svc", tenant="acme", run_id="run-signed")
    ctx = context(rt, *GET, token=token, headers={"X-Agent-Run-Id": "run-\udcff"})
    await authenticate(ctx, rt)
    assert ctx.run_id == "run-signed"


async def test_the_token_is_judged_before_the_hint(rt: Runtime) -> None:
    ctx = context(rt, *GET, headers={"X-Agent-Run-Id": "run-\udcff"})
    with pytest.raises(Unauthenticated):
        await authenticate(ctx, rt)


@pytest.mark.parametrize(("claims", "description"), [
    ({"tenant": 5}, "malformed tenant claim"),
    ({"run_id": None}, "malformed run_id claim"),
    ({"iat": float("nan")}, "malformed iat claim"),
], ids=repr)
async def test_a_malformed_claim_is_401_whatever_the_hint(
        rt: Runtime, dev_key: DevKey, claims: dict[str, Any], description: str) -> None:
    token = dev_key.token("svc", scopes=["echo:read"], **claims)
    ctx = context(rt, *GET, token=token, headers={"X-Agent-Run-Id": "a-fresh-budget"})
    with pytest.raises(Unauthenticated, match=description):
        await authenticate(ctx, rt)
    assert ctx.known_principal is None
    assert ctx.run_id is None


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer ", "Bearer not.a.jwt"])
async def test_no_valid_token_is_401(rt: Runtime, authorization: str | None) -> None:
    ctx = context(rt, *GET, headers={"Authorization": authorization} if authorization else {})
    with pytest.raises(Unauthenticated) as info:
        await authenticate(ctx, rt)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert ctx.known_principal is None
