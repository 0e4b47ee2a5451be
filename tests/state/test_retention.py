"""Retention: completed keys and unused runs are forgotten after their retention."""

from __future__ import annotations

from gateway.runtime import Runtime
from gateway.state.budgets import Limits, Reservation
from gateway.state.idempotency import Answer, KeyClaim, Scope
from gateway.state.retention import Retention
from tests.support import FakeClock


async def test_completed_keys_go_after_the_retention(rt: Runtime, clock: FakeClock) -> None:
    scope = Scope("acme", "keyed_post", "old")
    claim = KeyClaim(scope, "fp", "req_1", clock.now + 60)
    await rt.store.commit_forward(claim, None, clock.now)
    await rt.store.settle(claim, Answer(200, None, b""), clock.now)
    retention = Retention(rt.store, 24 * 3600, 48 * 3600, clock)
    assert await retention.purge_once() == (0, 0)
    clock.advance(24 * 3600 + 1)
    assert await retention.purge_once() == (1, 0)
    assert await rt.store.key_state(scope) is None


async def test_unused_runs_go_after_the_retention(rt: Runtime, clock: FakeClock) -> None:
    """Run ids are the agent's to choose: without retention the table grows forever."""
    limits = Limits(max_tool_calls=10)
    for run in ("run-old", "run-new"):
        await rt.store.commit_forward(None, Reservation("acme", run, "t", {}, limits),
                                      clock.now)
        clock.advance(3600)
    retention = Retention(rt.store, 24 * 3600, 24 * 3600, clock)
    clock.advance(23 * 3600)   # run-old is 24 h old, run-new 23 h
    assert await retention.purge_once() == (0, 1)
    assert (await rt.store.usage("acme", "run-old")).tool_calls == 0
    assert (await rt.store.usage("acme", "run-new")).tool_calls == 1
