"""Stage `policy`: the shipped policy on the real embedded engine, the input document, the
time it took (on the injected clock), and `fail_open`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.decision import Action
from gateway.core.errors import PolicyUnavailable
from gateway.devtokens import DevKey
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.policy import policy
from gateway.pipeline.usage import usage
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, context, runtime

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}


async def decided(rt: Runtime, token: str, amount: float) -> tuple[Action, tuple[str, ...]]:
    ctx = context(rt, "POST", "/billing/refunds", token=token, body={**REFUND, "amount": amount},
                  headers={"Idempotency-Key": "k"})
    await authenticate(ctx, rt)
    await usage(ctx, rt)
    await policy(ctx, rt)
    assert ctx.decision is not None
    return ctx.decision.action, ctx.decision.reasons


async def test_the_shipped_policy_decides(rt: Runtime, agent_token: str) -> None:
    assert (await decided(rt, agent_token, 120))[0] is Action.ALLOW
    action, reasons = await decided(rt, agent_token, 250)
    assert action is Action.REQUIRE_APPROVAL
    assert reasons[0].startswith("over_limit:")


async def test_the_time_is_measured_on_the_clock(rt: Runtime, agent_token: str,
                                                 clock: FakeClock) -> None:
    clock.step_s = 0.004  # each reading of the monotonic clock moves it 4 ms on
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token)
    await authenticate(ctx, rt)
    await policy(ctx, rt)
    assert ctx.policy_ms >= 4.0


async def test_a_policy_slower_than_its_timeout_is_unavailable(
        rt: Runtime, agent_token: str, clock: FakeClock) -> None:
    """Deterministic: the engine's clock says each evaluation took longer than
    `policy.timeout_ms` (100 ms), so its allow is not used."""
    clock.step_s = 0.2
    with pytest.raises(PolicyUnavailable):
        await decided(rt, agent_token, 120)
    clock.step_s = 0.0
    assert (await decided(rt, agent_token, 120))[0] is Action.ALLOW


async def test_a_late_hold_stays_a_hold(rt: Runtime, agent_token: str,
                                        clock: FakeClock) -> None:
    """Only a late allow is distrusted: a late hold or deny is still safe to act on."""
    clock.step_s = 0.2
    assert (await decided(rt, agent_token, 250))[0] is Action.REQUIRE_APPROVAL


async def test_fail_open_allows_only_what_the_engine_could_not_answer(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        agent_token: str) -> None:
    async with runtime(tmp_path, dev_key, recorder[1], clock, fail_open=True) as rt:
        clock.step_s = 0.2
        action, reasons = await decided(rt, agent_token, 120)
        assert (action, reasons) == (Action.ALLOW, ("fail_open",))
        assert (await decided(rt, agent_token, 250))[0] is Action.REQUIRE_APPROVAL
