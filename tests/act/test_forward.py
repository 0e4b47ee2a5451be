"""The `forward` act, against a loopback upstream: the plan is sent as it is, the outcome
is recorded, the answer is stored under the key, and failed spend comes back."""

from __future__ import annotations

from pathlib import Path

import orjson
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
async def test_a_call_that_reached_the_upstream_keeps_its_spend(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        agent_token: str, path: str, status: int) -> None:
    """Whatever the upstream answered, it may have acted: the spend stays (DESIGN §6)."""
    async with runtime(tmp_path, dev_key, recorder[1], clock, budgets=BUDGETS) as rt:
        ctx = await decided(rt, agent_token, path, {"amount": 30},
                            **{"X-Agent-Run-Id": "run-f"})
        assert ctx.committed
        async with CallAudit(rt.audit, "req_test", None) as audit:
            audit.decision({})
            reply = await forward(ctx, rt, audit)
        assert reply.status == status
        usage = await rt.store.usage("acme", "run-f")
        assert (usage.tool_calls, usage.spent) == (1, {"amount": 30.0})


async def test_a_call_that_never_left_is_given_back(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        agent_token: str) -> None:
    """The upstream could not be connected to: nothing was sent, so neither the call nor
    its spend counts, and its key is free for the agent's retry."""
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       budgets={"max_tool_calls": 5}) as rt:
        ctx = context(rt, "GET", "/echo/down", token=agent_token,
                      headers={"X-Agent-Run-Id": "run-d"})
        await pipeline.run(ctx, rt)
        assert ctx.committed
        async with CallAudit(rt.audit, "req_test", None) as audit:
            audit.decision({})
            reply = await forward(ctx, rt, audit)
        assert (reply.status, orjson.loads(reply.body)["error"]["code"]) == (
            502, "upstream_error")
        assert (await rt.store.usage("acme", "run-d")).tool_calls == 0
        [outcome] = [r for r in records(rt) if r["kind"] == "outcome"]
        assert outcome["sent"] is False


async def test_a_timeout_keeps_its_spend(tmp_path: Path, dev_key: DevKey,
                                         recorder: tuple[Recorder, str], clock: FakeClock,
                                         agent_token: str) -> None:
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       budgets={"max_tool_calls": 5}) as rt:
        ctx = context(rt, "GET", "/echo/slow", token=agent_token,
                      headers={"X-Agent-Run-Id": "run-t", "X-Gate": "never"})
        await pipeline.run(ctx, rt)
        async with CallAudit(rt.audit, "req_test", None) as audit:
            audit.decision({})
            reply = await forward(ctx, rt, audit)
        assert reply.status == 504
        assert (await rt.store.usage("acme", "run-t")).tool_calls == 1


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
