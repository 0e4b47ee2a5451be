"""Stage `usage`: the run's counters before this call (zero without a run)."""

from __future__ import annotations

from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.usage import usage
from gateway.runtime import Runtime
from gateway.state.budgets import Limits, Reservation
from tests.support import START, context


async def test_no_run_means_zero_counters(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token)
    await authenticate(ctx, rt)
    await usage(ctx, rt)
    assert ctx.usage is not None
    assert ctx.usage.tool_calls == 0


async def test_the_run_is_read_from_the_store(rt: Runtime, agent_token: str) -> None:
    await rt.store.commit_forward(None, Reservation("acme", "run-u", "spend_post",
                                                    {"amount": 7}, Limits(max_tool_calls=9)),
                                  START)
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token,
                  headers={"X-Agent-Run-Id": "run-u"})
    await authenticate(ctx, rt)
    await usage(ctx, rt)
    assert ctx.usage is not None
    assert (ctx.usage.tool_calls, ctx.usage.spent) == (1, {"amount": 7.0})
