"""The `forward` act, against a loopback upstream: the plan is sent as it is, the outcome
is recorded, the answer is stored under the key, and failed spend comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import pipeline
from gateway.act.forward import forward, withdraw
from gateway.audit.call import CallAudit
from gateway.core.context import CallContext
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from gateway.state.idempotency import KeyStatus
from tests.support import UPSTREAM_SECRET, FakeClock, Recorder, context, records, runtime

BUDGETS = {"max_spend": {"amount": 100}}


async def decided(rt: Runtime, token: str, path: str, body: dict[str, object],
                  **headers: str) -> CallContext:
    ctx = context(rt, "POST", path, token=token, body=body, headers=headers)
    await pipeline.run(ctx, rt)
    return ctx


async def test_the_plan_is_sent_as_it_is(rt: Runtime, agent_token: str,
                                         recorder: tuple[Recorder, str]) -> None:
    ctx = await decided(rt, agent_token, "/state/items", {"name": "a"},
                        **{"Idempotency-Key": "f-1", "X-Forwarded-User": "admin"})
    async with CallAudit(rt.audit, "req_test", None) as audit:
        audit.decision({})
        reply = await forward(ctx, rt, audit)
    assert reply.status == 201
    seen, headers = recorder[0], recorder[0].headers()
    assert seen.seen[-1].raw_path == "/v1/items"
    assert seen.bodies[-1] == ctx.plan.body
    sent = {k: v for k, v in headers.items() if k not in ("host", "content-length",
                                                          "authorization")}
    assert sent == {k.lower(): v for k, v in ctx.plan.headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    [outcome] = [r for r in records(rt) if r["kind"] == "outcome"]
    assert (outcome["upstream_status"], outcome["status"]) == (201, 201)
    assert ctx.claim is not None
    state = await rt.store.key_state(ctx.claim.scope)
    assert state is not None
    assert (state.status, state.answer_status) == (KeyStatus.DONE, 201)


@pytest.mark.parametrize(("path", "status"), [("/state/spend", 201),
                                              ("/state/spend-fail", 502)])
async def test_failed_spend_comes_back(tmp_path: Path, dev_key: DevKey,
                                       recorder: tuple[Recorder, str], clock: FakeClock,
                                       agent_token: str, path: str, status: int) -> None:
    async with runtime(tmp_path, dev_key, recorder[1], clock, budgets=BUDGETS) as rt:
        ctx = await decided(rt, agent_token, path, {"amount": 30},
                            **{"X-Agent-Run-Id": "run-f"})
        assert ctx.committed
        async with CallAudit(rt.audit, "req_test", None) as audit:
            audit.decision({})
            reply = await forward(ctx, rt, audit)
        assert reply.status == status
        usage = await rt.store.usage("acme", "run-f")
        assert usage.tool_calls == 1, "a call that was sent counts, whatever it answered"
        assert usage.spent == {"amount": 30.0 if status < 400 else 0.0}


async def test_an_unreachable_upstream_is_502_with_its_outcome(rt: Runtime,
                                                                 agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/down", token=agent_token)
    await pipeline.run(ctx, rt)
    async with CallAudit(rt.audit, "req_test", None) as audit:
        audit.decision({})
        reply = await forward(ctx, rt, audit)
    assert (reply.status, reply.decision) == (502, "allow")
    [outcome] = [r for r in records(rt) if r["kind"] == "outcome"]
    assert (outcome["error"], outcome["upstream_status"]) == ("upstream_error", None)


async def test_withdraw_gives_back_key_and_budget(tmp_path: Path, dev_key: DevKey,
                                                  recorder: tuple[Recorder, str],
                                                  clock: FakeClock, agent_token: str) -> None:
    async with runtime(tmp_path, dev_key, recorder[1], clock, budgets=BUDGETS) as rt:
        ctx = await decided(rt, agent_token, "/state/items", {"name": "a", "amount": 5},
                            **{"Idempotency-Key": "f-2", "X-Agent-Run-Id": "run-w"})
        assert ctx.committed and ctx.claim is not None
        await withdraw(ctx, rt)
        assert await rt.store.key_state(ctx.claim.scope) is None
        assert (await rt.store.usage("acme", "run-w")).tool_calls == 0
        assert recorder[0].seen == []
