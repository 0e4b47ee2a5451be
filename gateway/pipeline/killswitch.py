"""Stage `killswitch`: refuse calls stopped by an operator's kill switch.

Reads: the replica's kill switches (refreshed from the store every `killswitch.poll_ms`),
the principal's tenant and agent, the tool. Refuses: 403 `killed`, naming the switch's
scope and reason. Runs right after authentication: a killed call is refused before it
touches any state.
"""

from __future__ import annotations

from gateway.context import CallContext, Runtime
from gateway.core.errors import Killed


async def killswitch(ctx: CallContext, rt: Runtime) -> None:
    assert ctx.principal is not None and ctx.spec is not None
    switch = rt.kills.matching(ctx.principal.tenant, ctx.principal.agent, ctx.spec.name)
    if switch is not None:
        raise Killed(f"calls are stopped by the kill switch {switch.scope}: {switch.reason}",
                     scope=switch.scope, reasons=[f"killed: {switch.scope}: {switch.reason}"],
                     fallback="route_to_human")
