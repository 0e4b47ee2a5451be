"""Stage `idempotency`: the key is checked, looked up once, and a retry is answered from
what the key holds — never decided again."""

from __future__ import annotations

import pytest

from gateway.core.context import CallContext
from gateway.core.errors import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
)
from gateway.devtokens import DevKey
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.idempotency import idempotency
from gateway.runtime import Runtime
from gateway.state.idempotency import LEASE_MARGIN_S, Answer, KeyStatus
from tests.support import FakeClock, context

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 5, "currency": "USD"}


async def checked(rt: Runtime, token: str, key: str | None,
                  body: dict[str, object] | None = None) -> CallContext:
    ctx = context(rt, "POST", "/billing/refunds", token=token, body=body or REFUND,
                  headers={"Idempotency-Key": key} if key is not None else {})
    await authenticate(ctx, rt)
    await idempotency(ctx, rt)
    return ctx


async def test_a_new_key_is_ready_to_claim(rt: Runtime, agent_token: str,
                                           clock: FakeClock) -> None:
    ctx = await checked(rt, agent_token, "  k-1  ")
    assert ctx.idempotency_key == "k-1"
    assert ctx.answered is None
    assert ctx.claim is not None
    assert (ctx.claim.scope.tenant, ctx.claim.scope.tool, ctx.claim.scope.key) == (
        "acme", "create_refund_request", "k-1")
    # The lease outlives the call: the tool's 5 s timeout plus the margin, not the
    # configured 60 s alone.
    assert ctx.claim.lease_until == clock.now + 5 + LEASE_MARGIN_S


async def test_a_tool_without_keys_ignores_one(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token,
                  headers={"Idempotency-Key": "ignored"})
    await authenticate(ctx, rt)
    await idempotency(ctx, rt)
    assert (ctx.idempotency_key, ctx.claim) == (None, None)


async def test_a_required_key_is_required(rt: Runtime, agent_token: str) -> None:
    with pytest.raises(IdempotencyKeyRequired):
        await checked(rt, agent_token, None)
    with pytest.raises(IdempotencyKeyRequired):
        await checked(rt, agent_token, "   ")


@pytest.mark.parametrize("key", ["k" * 256, "has space", "caf\u00e9", "tab\tkey"])
async def test_an_invalid_key_is_refused(rt: Runtime, agent_token: str, key: str) -> None:
    with pytest.raises(IdempotencyKeyInvalid):
        await checked(rt, agent_token, key)


async def test_a_completed_key_is_replayed(rt: Runtime, agent_token: str) -> None:
    first = await checked(rt, agent_token, "k-done")
    assert first.claim is not None
    await rt.store.commit_forward(first.claim, None, rt.clock.time())
    await rt.store.settle(first.claim, Answer(201, "application/json", b"{}"),
                          rt.clock.time())
    retry = await checked(rt, agent_token, "k-done")
    assert retry.answered is not None
    assert (retry.answered.status, retry.answered.answer_status) == (KeyStatus.DONE, 201)


async def test_a_key_in_flight_is_409_until_its_lease_runs_out(
        rt: Runtime, agent_token: str, clock: FakeClock) -> None:
    first = await checked(rt, agent_token, "k-busy")
    assert first.claim is not None
    await rt.store.commit_forward(first.claim, None, clock.now)
    with pytest.raises(IdempotencyInFlight):
        await checked(rt, agent_token, "k-busy")
    clock.advance(5 + LEASE_MARGIN_S)
    later = await checked(rt, agent_token, "k-busy")  # its gateway died: free to take over
    assert later.answered is None


async def test_another_call_or_principal_with_the_key_is_422(
        rt: Runtime, agent_token: str, dev_key: DevKey) -> None:
    first = await checked(rt, agent_token, "k-mine")
    assert first.claim is not None
    await rt.store.commit_forward(first.claim, None, rt.clock.time())
    with pytest.raises(IdempotencyKeyReused):
        await checked(rt, agent_token, "k-mine", {**REFUND, "amount": 6})
    # SECURITY: a colleague in the same tenant never gets this principal's answer.
    colleague = dev_key.token("svc-colleague", tenant="acme", scopes=["billing:refund"])
    with pytest.raises(IdempotencyKeyReused):
        await checked(rt, colleague, "k-mine")
