"""Retention: completed keys are forgotten after `idempotency.retention_hours`."""

from __future__ import annotations

from gateway.runtime import Runtime
from gateway.state.idempotency import Answer, KeyClaim, Scope
from gateway.state.retention import KeyRetention
from tests.support import FakeClock


async def test_completed_keys_go_after_the_retention(rt: Runtime, clock: FakeClock) -> None:
    scope = Scope("acme", "keyed_post", "old")
    claim = KeyClaim(scope, "fp", "req_1", clock.now + 60)
    await rt.store.commit_forward(claim, None, clock.now)
    await rt.store.settle(claim, Answer(200, None, b""), clock.now)
    retention = KeyRetention(rt.store, 24 * 3600, clock)
    assert await retention.purge_once() == 0
    clock.advance(24 * 3600 + 1)
    assert await retention.purge_once() == 1
    assert await rt.store.key_state(scope) is None
