"""Kill switches: which switch stops which call, scopes checked (their shape, and that they
name something the gateway knows), and a store that cannot be read leaves the last known set
in force."""

from __future__ import annotations

import asyncio

import pytest

from gateway import auth
from gateway.core.errors import InvalidArguments, StoreUnavailable, UnknownScope
from gateway.state.killswitch import (
    MAX_NAME,
    MAX_NAMED,
    KillSwitch,
    KillSwitches,
    check_scope,
    check_target,
)

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


@pytest.mark.parametrize("scope", ["", "everything", "tool:Bad Name", "tenant:", "tool:",
                                   "tenant:a\u2028b", "global\n"])
def test_scopes_are_checked(scope: str) -> None:
    with pytest.raises(InvalidArguments):
        check_scope(scope)


@pytest.mark.parametrize("scope", [
    "tenant:acme\x1b[2J", "agent:\x1b]0;pwned\x07", "tenant:a\x00b", "agent:bot\x7f",
    "agent:bot\x9b", "tenant:\u202eemca", "agent:b\u200bot", "tenant:\ud800",
    "tenant:acme\U000e0041", "tenant:" + "a" * (MAX_NAME + 1)])
def test_a_name_no_token_can_carry_is_refused(scope: str) -> None:
    """Well-formed, but no token can carry the name (`gateway.auth`): the switch could stop
    nothing, and the name would reach terminals and logs. Not even force sets it."""
    with pytest.raises(UnknownScope) as info:
        check_scope(scope)
    refusal = info.value
    assert (refusal.status, refusal.extra) == (422, {"forceable": False})
    assert "names are printable and at most 1024 characters" in refusal.message
    assert refusal.message.isprintable()  # the name is quoted escaped


@pytest.mark.parametrize("scope", ["global", "tenant:acme", "agent:support-bot@acme",
                                   "tenant:café", "agent:" + "a" * MAX_NAME, "tool:get_order"])
def test_names_a_token_can_carry_pass(scope: str) -> None:
    assert check_scope(scope) == scope


def test_a_name_is_bounded_like_a_tokens() -> None:
    assert MAX_NAME == auth.MAX_NAME


def test_a_switch_an_earlier_version_set_can_still_be_revived() -> None:
    """Earlier versions took any name without whitespace: such a switch stops nothing (no
    token carries that name), and reviving it must stay possible."""
    assert check_scope("tenant:acme\x1b[2J", set_before=True) == "tenant:acme\x1b[2J"
    for scope in ("tenant:a b", "tenant:", "everything", "tool:Bad"):
        with pytest.raises(InvalidArguments):
            check_scope(scope, set_before=True)


async def _list(switches: list[KillSwitch]) -> list[KillSwitch]:
    return switches


TOOLS = ["create_refund_request", "get_order", "lookup_customer"]


@pytest.mark.parametrize("scope", ["global", "tool:get_order", "tenant:acme", "agent:bot"])
def test_a_known_target_passes(scope: str) -> None:
    assert check_target(scope, known=True, candidates=TOOLS, force=False) is None


def test_global_needs_no_target() -> None:
    assert check_target("global", known=False, candidates=[], force=False) is None


def test_an_unknown_tool_is_refused_naming_the_loaded_ones() -> None:
    with pytest.raises(UnknownScope) as info:
        check_target("tool:get_ordr", known=False, candidates=TOOLS, force=False)
    refusal = info.value
    assert (refusal.status, str(refusal.code)) == (422, "unknown_scope")
    assert "no tool 'get_ordr' is loaded; did you mean tool:get_order?" in refusal.message
    assert "(loaded: create_refund_request, get_order, lookup_customer)" in refusal.message
    assert refusal.extra["known"] == TOOLS


def test_an_unknown_tenant_is_refused() -> None:
    with pytest.raises(UnknownScope) as info:
        check_target("tenant:acne", known=False, candidates=["acme", "globex"], force=False)
    assert "did you mean tenant:acme?" in info.value.message
    assert info.value.extra["configured"] == ["acme", "globex"]


@pytest.mark.parametrize("scope", ["tool:not_yet_loaded", "tenant:new-customer"])
def test_force_sets_it_all_the_same(scope: str) -> None:
    assert check_target(scope, known=False, candidates=TOOLS, force=True) is None


def test_an_agent_never_seen_is_a_warning_not_a_refusal() -> None:
    """The gateway keeps no list of agents: most never have a held call."""
    warning = check_target("agent:supprt-bot", known=False, candidates=["support-bot"],
                           force=False)
    assert warning is not None
    assert "agent 'supprt-bot'" in warning and "did you mean agent:support-bot?" in warning
    assert check_target("agent:supprt-bot", known=False, candidates=[], force=True) is None


def test_what_a_refusal_quotes_and_lists_is_bounded() -> None:
    many = [f"tool_{i:03}" for i in range(MAX_NAMED * 2)]
    with pytest.raises(UnknownScope) as info:
        check_target("tool:" + "x" * 1000, known=False, candidates=many, force=False)
    assert len(info.value.extra["known"]) == MAX_NAMED
    assert len(info.value.message) < 1500
