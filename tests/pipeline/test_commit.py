"""Stage `commit`: a call about to be forwarded takes its key and its budget in one
transaction; anything else commits nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import pipeline
from gateway.core.context import CallContext
from gateway.core.decision import Act
from gateway.core.errors import BudgetExceeded, IdempotencyInFlight
from gateway.core.stage import Stage
from gateway.devtokens import DevKey
from gateway.pipeline.commit import commit
from gateway.runtime import Runtime
from gateway.state.idempotency import Answer, KeyStatus
from tests.support import FakeClock, Recorder, context, runtime

BUDGETS = {"max_tool_calls": 3, "max_spend": {"amount": 100}}


async def run(rt: Runtime, token: str, path: str, body: dict[str, object],
              **headers: str) -> CallContext:
    ctx = context(rt, "POST", path, token=token, body=body, headers=headers)
    await pipeline.run(ctx, rt)
    return ctx


@pytest.fixture
async def budgeted(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                   clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(tmp_path, dev_key, recorder[1], clock, budgets=BUDGETS) as rt:
        yield rt


async def test_a_forwarded_call_takes_key_and_budget(budgeted: Runtime,
                                                     agent_token: str) -> None:
    ctx = await run(budgeted, agent_token, "/state/items", {"name": "a"},
                    **{"Idempotency-Key": "c-1", "X-Agent-Run-Id": "run-c"})
    assert ctx.verdict().act is Act.FORWARD
    assert ctx.committed
    assert ctx.reservation is not None
    assert ctx.claim is not None
    state = await budgeted.store.key_state(ctx.claim.scope)
    assert state is not None
    assert state.status is KeyStatus.IN_FLIGHT
    assert (await budgeted.store.usage("acme", "run-c")).tool_calls == 1


async def test_a_held_call_commits_nothing_here(budgeted: Runtime, agent_token: str) -> None:
    ctx = await run(budgeted, agent_token, "/billing/refunds",
                    {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250,
                     "currency": "USD"}, **{"Idempotency-Key": "c-2", "X-Agent-Run-Id": "r"})
    assert ctx.verdict().act is Act.HOLD
    assert not ctx.committed
    assert ctx.claim is not None
    assert await budgeted.store.key_state(ctx.claim.scope) is None
    assert (await budgeted.store.usage("acme", "r")).tool_calls == 0


async def test_over_budget_leaves_the_key_free(budgeted: Runtime, agent_token: str) -> None:
    for i in range(3):
        ctx = await run(budgeted, agent_token, "/state/spend", {"amount": 1},
                        **{"X-Agent-Run-Id": "run-full"})
        assert ctx.committed, i
    ctx = context(budgeted, "POST", "/state/items", token=agent_token, body={"name": "x"},
                  headers={"Idempotency-Key": "c-3", "X-Agent-Run-Id": "run-full"})
    verdict = await pipeline.run(ctx, budgeted)
    assert isinstance(verdict.error, BudgetExceeded)
    assert (verdict.stage, verdict.act) == ("commit", Act.REFUSE)
    assert ctx.claim is not None
    assert await budgeted.store.key_state(ctx.claim.scope) is None


async def decided_before(rt: Runtime, token: str, key: str) -> CallContext:
    """A request that has passed every stage but `commit` (its key was still free)."""
    ctx = context(rt, "POST", "/state/items", token=token, body={"name": "a"},
                  headers={"Idempotency-Key": key}, request_id=f"req_late_{key}")
    for name, stage in pipeline.STAGES[:-1]:
        ctx.stage = name
        await stage(ctx, rt)
    assert ctx.answered is None
    ctx.stage = Stage.COMMIT
    return ctx


async def test_a_race_lost_to_a_call_in_flight_is_409_and_costs_nothing(
        budgeted: Runtime, agent_token: str) -> None:
    late = await decided_before(budgeted, agent_token, "c-4")
    first = await run(budgeted, agent_token, "/state/items", {"name": "a"},
                      **{"Idempotency-Key": "c-4"})
    assert first.committed
    with pytest.raises(IdempotencyInFlight):
        await commit(late, budgeted)
    assert not late.committed


async def test_a_race_lost_to_a_completed_call_is_its_replay(
        budgeted: Runtime, agent_token: str) -> None:
    late = await decided_before(budgeted, agent_token, "c-5")
    first = await run(budgeted, agent_token, "/state/items", {"name": "a"},
                      **{"Idempotency-Key": "c-5"})
    assert first.claim is not None
    await budgeted.store.settle(first.claim, Answer(201, None, b"{}"),
                                budgeted.clock.time())
    await commit(late, budgeted)
    assert late.answered is not None
    assert late.verdict().act is Act.REPLAY
    assert not late.committed
