"""The pipeline: its order is the documented one, a retry stops it, and a stage that fails
unexpectedly is a deny naming the stage — never a call made on missing facts."""

from __future__ import annotations

import pytest

from gateway import pipeline
from gateway.core.context import CallContext, OutOfOrder
from gateway.core.decision import Act, Action
from gateway.core.errors import InternalError
from gateway.core.stage import Stage
from gateway.runtime import Runtime
from tests.support import context


def test_the_order_is_the_documented_one() -> None:
    assert [name for name, _ in pipeline.STAGES] == [
        Stage.AUTHENTICATE, Stage.KILLSWITCH, Stage.SCOPES, Stage.IDEMPOTENCY,
        Stage.VALIDATE, Stage.PLAN, Stage.USAGE, Stage.POLICY, Stage.COMMIT]
    doc = pipeline.__doc__ or ""
    positions = [doc.index(f"{name}  ") for name, _ in pipeline.STAGES]
    assert positions == sorted(positions), "the docstring explains the stages in order"


async def test_an_allowed_call_runs_every_stage(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token)
    verdict = await pipeline.run(ctx, rt)
    assert (verdict.action, verdict.act, verdict.stage) == (Action.ALLOW, Act.FORWARD,
                                                            Stage.POLICY)
    assert ctx.stage is Stage.COMMIT


async def test_a_refusal_stops_at_its_stage(rt: Runtime) -> None:
    ctx = context(rt, "GET", "/echo/items/abc")
    verdict = await pipeline.run(ctx, rt)
    assert (verdict.act, verdict.stage, verdict.code) == (Act.REFUSE, Stage.AUTHENTICATE,
                                                          "unauthenticated")
    assert ctx.decision is None


async def test_an_unexpected_failure_is_a_deny_naming_the_stage(
        rt: Runtime, agent_token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(ctx: CallContext, rt: Runtime) -> None:
        raise ZeroDivisionError

    stages = dict(pipeline.STAGES)
    stages[Stage.VALIDATE] = broken
    monkeypatch.setattr(pipeline, "STAGES", tuple(stages.items()))
    verdict = await pipeline.run(context(rt, "GET", "/echo/items/abc", token=agent_token), rt)
    assert (verdict.act, verdict.stage) == (Act.REFUSE, Stage.VALIDATE)
    assert isinstance(verdict.error, InternalError)


def test_facts_read_before_their_stage_are_an_error(rt: Runtime) -> None:
    ctx = context(rt, "GET", "/echo/items/abc")
    with pytest.raises(OutOfOrder):
        _ = ctx.principal
    with pytest.raises(OutOfOrder):
        _ = ctx.plan
