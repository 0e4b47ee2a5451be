"""Stage `killswitch`: refuse calls stopped by an operator's kill switch.

Reads: the replica's kill switches (refreshed from the store every `killswitch.poll_ms`),
the principal's tenant and agent, the tool. Refuses: 403 `killed`, naming the switch's
scope and reason. Runs right after authentication: a killed call is refused before it
touches any state. The approval executor applies the same rule (`KillSwitches.refusal`)
before it sends a held call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def killswitch(ctx: CallContext, rt: Runtime) -> None:
    principal = ctx.principal
    refusal = rt.kills.refusal(principal.tenant, principal.agent, ctx.call.spec.name)
    if refusal is not None:
        raise refusal
