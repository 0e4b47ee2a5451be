"""Stage `killswitch`: a switch on the tool, the tenant, the agent or everything stops the
call before it touches any state."""

from __future__ import annotations

import pytest

from gateway.core.errors import Killed
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.killswitch import killswitch
from gateway.runtime import Runtime
from gateway.state.killswitch import KillSwitch
from tests.support import START, context


@pytest.mark.parametrize("scope", ["global", "tenant:acme", "agent:support-bot",
                                   "tool:echo_item"])
async def test_a_matching_switch_refuses(rt: Runtime, agent_token: str, scope: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token)
    await authenticate(ctx, rt)
    rt.kills.remember(KillSwitch(scope, "incident 7", {"sub": "ops"}, START), scope)
    with pytest.raises(Killed) as info:
        await killswitch(ctx, rt)
    assert info.value.extra["scope"] == scope
    assert info.value.extra["reasons"] == [f"killed: {scope}: incident 7"]


@pytest.mark.parametrize("scope", ["tenant:globex", "agent:other", "tool:get_order"])
async def test_other_switches_let_it_pass(rt: Runtime, agent_token: str, scope: str) -> None:
    ctx = context(rt, "GET", "/echo/items/abc", token=agent_token)
    await authenticate(ctx, rt)
    rt.kills.remember(KillSwitch(scope, "elsewhere", {"sub": "ops"}, START), scope)
    await killswitch(ctx, rt)
