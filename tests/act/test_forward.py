"""The `forward` act, against a loopback upstream: the plan is sent as it is, the outcome
is recorded, the answer is stored under the key, and failed spend comes back. A call cut
mid-send (the drain's `cut` cancels it) keeps a final answer under its key."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway import pipeline
from gateway.act.answers import Reply
from gateway.act.forward import CUT_WAIT_S, forward, withdraw
from gateway.act.handle import handle
from gateway.audit.call import CallAudit
from gateway.core.call import ToolCall
from gateway.core.context import CallContext
from gateway.devtokens import DevKey
from gateway.listener.drain import CANCEL_GRACE_S
from gateway.runtime import Runtime
from gateway.state.idempotency import KeyStatus, Scope
from gateway.store import sqlite_runner
from tests.support import (
    UPSTREAM_SECRET,
    FakeClock,
    Recorder,
    context,
    records,
    runtime,
    tool_call,
)

BUDGETS = {"max_spend": {"amount": 100}}
WAIT_S = 15


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


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Poll `condition` until it holds (a generous deadline, never a timing)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited too long for {what}"
        await asyncio.sleep(0.01)


def slow_call(rt: Runtime, token: str, request_id: str) -> ToolCall:
    """A keyed call the recording upstream holds until `release` (its `X-Gate`)."""
    return tool_call(rt.bundles.current, "POST", "/state/slow", token=token, body={"n": 1},
                     headers={"Idempotency-Key": "cut-1", "X-Gate": "held",
                              "X-Agent-Run-Id": "run-c"}, request_id=request_id)


async def held_at_the_upstream(rt: Runtime, token: str, upstream: Recorder
                               ) -> asyncio.Task[Reply]:
    """The call, sent and held at the upstream: the test cancels it as the drain's `cut`
    does."""
    bundle = rt.bundles.current
    call = asyncio.create_task(handle(slow_call(rt, token, "req_cut"), bundle, rt))
    await eventually(lambda: upstream.seen, "the call to reach the upstream")
    return call


async def test_a_call_cut_mid_send_answers_its_retry_and_is_never_sent_again(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        agent_token: str) -> None:
    """It may have run: its key keeps a 504 saying so, and a retry with the key — even once
    the claim's lease is long over — is answered that and not sent (DESIGN §4); the run
    still counts the call (§6)."""
    upstream = recorder[0]
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       budgets={"max_tool_calls": 5}) as rt:
        call = await held_at_the_upstream(rt, agent_token, upstream)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, WAIT_S)
        clock.advance(3600)          # the lease of an unsettled claim would be over
        upstream.release.set()       # a call sent again would be answered at once
        again = await handle(slow_call(rt, agent_token, "req_retry"), rt.bundles.current, rt)
        assert (again.status, again.headers.get("Idempotent-Replayed")) == (504, "true")
        error = orjson.loads(again.body)["error"]
        assert (error["code"], error["request_id"]) == ("upstream_timeout", "req_cut")
        assert "stopped before the upstream answered" in error["message"]
        assert "may have run" in error["message"]
        assert len(upstream.seen) == 1, "sent once"
        [outcome] = [r for r in records(rt) if r["kind"] == "outcome"]
        assert (outcome["decision_id"], outcome["error"], outcome["status"],
                outcome["sent"]) == ("req_cut", "cancelled", 504, True)
        assert (await rt.store.usage("acme", "run-c")).tool_calls == 1, "kept: it may have run"


async def test_a_slow_store_does_not_hold_a_cut_call_and_still_gets_its_answer(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        agent_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At shutdown the store may be slow — here another connection holds SQLite's write
    lock, and the store would wait a minute for it. The cut call stops waiting after
    `CUT_WAIT_S`; its answer is stored when the lock is free, by work the cancellation did
    not reach."""
    assert CUT_WAIT_S < CANCEL_GRACE_S, "inside the time the drain gives a cut call"
    monkeypatch.setattr(sqlite_runner, "BUSY_TIMEOUT_S", 60.0)
    async with runtime(tmp_path, dev_key, recorder[1], clock) as rt:
        assert rt.settings.sqlite_path is not None
        scope = Scope("acme", "keyed_slow", "cut-1")
        lock = sqlite3.connect(rt.settings.sqlite_path, isolation_level=None)
        try:
            call = await held_at_the_upstream(rt, agent_token, recorder[0])
            lock.execute("BEGIN IMMEDIATE")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, WAIT_S)   # not the store's minute
            state = await rt.store.key_state(scope)
            assert state is not None and state.status is KeyStatus.IN_FLIGHT
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        done: list[object] = []

        async def settled() -> None:
            state = await rt.store.key_state(scope)
            if state is not None and state.status is KeyStatus.DONE:
                done.append(state.answer_status)

        deadline = time.monotonic() + WAIT_S
        while not done:
            assert time.monotonic() < deadline, "the answer was never stored"
            await settled()
            await asyncio.sleep(0.01)
        assert done == [504]
