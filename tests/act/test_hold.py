"""The `hold` act: the exact plan is stored with its decision record, in one transaction
that also takes the key — or nothing is held."""

from __future__ import annotations

from gateway import pipeline
from gateway.act.answers import Reply
from gateway.act.hold import hold
from gateway.audit.call import CallAudit
from gateway.core.context import CallContext
from gateway.core.decision import Act, Verdict
from gateway.runtime import Runtime
from gateway.state.idempotency import KeyStatus
from tests.support import context, records, unwritable

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}


async def held(rt: Runtime, token: str, key: str) -> tuple[CallContext, Verdict]:
    ctx = context(rt, "POST", "/billing/refunds", token=token, body=REFUND,
                  headers={"Idempotency-Key": key, "Accept-Language": "fr"})
    verdict = await pipeline.run(ctx, rt)
    assert verdict.act is Act.HOLD
    return ctx, verdict


async def test_the_call_is_held_exactly_as_planned(rt: Runtime, agent_token: str) -> None:
    ctx, verdict = await held(rt, agent_token, "h-1")
    async with CallAudit(rt.audit, "req_test", None) as audit:
        reply = await hold(ctx, rt, verdict, audit)
    assert isinstance(reply, Reply)
    assert reply.status == 202
    [decision] = [r for r in records(rt) if r["kind"] == "decision"]
    approval = await rt.store.get_approval(decision["approval_id"])
    assert approval is not None
    assert approval.plan == ctx.plan
    assert approval.call_digest == ctx.plan.digest()
    assert approval.plan.headers["Accept-Language"] == "fr"
    assert ctx.claim is not None
    state = await rt.store.key_state(ctx.claim.scope)
    assert state is not None
    assert (state.status, state.approval and state.approval.id) == (KeyStatus.HELD,
                                                                     approval.id)
    kinds = [r.get("event") or r["kind"] for r in records(rt)]
    assert kinds == ["decision", "queued"]


async def test_no_record_nothing_held(rt: Runtime, agent_token: str) -> None:
    ctx, verdict = await held(rt, agent_token, "h-2")
    path = rt.settings.audit.file
    assert path is not None
    with unwritable(path):   # every write fails, through the open descriptor too
        async with CallAudit(rt.audit, "req_test", None) as audit:
            reply = await hold(ctx, rt, verdict, audit)
    assert isinstance(reply, Reply)
    assert reply.status == 503
    assert await rt.store.list_approvals() == []
    assert ctx.claim is not None
    assert await rt.store.key_state(ctx.claim.scope) is None
    assert [r for r in records(rt) if r["decision_id"] == "req_test"] == []


async def test_a_key_taken_meanwhile_is_answered_from_what_it_holds(
        rt: Runtime, agent_token: str) -> None:
    first, first_verdict = await held(rt, agent_token, "h-3")
    late, late_verdict = await held(rt, agent_token, "h-3")  # both looked before either held
    async with CallAudit(rt.audit, "req_a", None) as audit:
        assert isinstance(await hold(first, rt, first_verdict, audit), Reply)
    async with CallAudit(rt.audit, "req_b", None) as audit:
        instead = await hold(late, rt, late_verdict, audit)
        assert not audit.decision_written
    assert isinstance(instead, Verdict)
    assert (instead.act, instead.stage) == (Act.ANSWER_HELD, "commit")
    assert len(await rt.store.list_approvals()) == 1
