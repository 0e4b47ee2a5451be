"""Kill switches: which switch stops which call, scopes checked, and a store that cannot be
read leaves the last known set in force."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.errors import InvalidArguments, StoreUnavailable
from gateway.state.killswitch import KillSwitch, KillSwitches, check_scope

T = 1_800_000_000.0


def switch(scope: str) -> KillSwitch:
    return KillSwitch(scope, f"stop {scope}", {"sub": "ops"}, T)


@pytest.mark.parametrize("scope", ["global", "tenant:acme", "agent:bot", "tool:refund"])
async def test_each_scope_stops_its_calls(scope: str) -> None:
    kills = KillSwitches(lambda: _list([switch(scope)]), 1.0)
    await kills.refresh()
    refusal = kills.refusal("acme", "bot", "refund")
    assert refusal is not None
    assert refusal.extra["scope"] == scope
    assert kills.refusal("globex", "other", "lookup") is None or scope == "global"


async def test_the_most_general_switch_is_named() -> None:
    kills = KillSwitches(lambda: _list([switch("tool:refund"), switch("global")]), 1.0)
    await kills.refresh()
    found = kills.matching("acme", "bot", "refund")
    assert found is not None
    assert found.scope == "global"


async def test_a_failed_refresh_keeps_the_last_known_set() -> None:
    calls = {"n": 0}

    async def load() -> list[KillSwitch]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise StoreUnavailable("down")
        return [switch("global")]

    kills = KillSwitches(load, 1.0)
    await kills.refresh()
    with pytest.raises(StoreUnavailable):
        await kills.refresh()
    assert kills.matching(None, None, "x") is not None


async def test_a_switch_set_elsewhere_arrives_with_the_next_poll() -> None:
    """Another replica set it in the store: this one picks it up within `poll_ms`."""
    stored: list[KillSwitch] = []
    arrived = asyncio.Event()

    async def load() -> list[KillSwitch]:
        if stored:
            arrived.set()
        return list(stored)

    kills = KillSwitches(load, 0.01)
    await kills.start()
    try:
        assert kills.matching(None, None, "refund") is None
        stored.append(switch("tool:refund"))
        await asyncio.wait_for(arrived.wait(), 5)
        assert kills.matching(None, None, "refund") is not None
    finally:
        await kills.close()


@pytest.mark.parametrize("scope", ["", "everything", "tool:Bad Name", "tenant:", "tool:"])
def test_scopes_are_checked(scope: str) -> None:
    with pytest.raises(InvalidArguments):
        check_scope(scope)


async def _list(switches: list[KillSwitch]) -> list[KillSwitch]:
    return switches
