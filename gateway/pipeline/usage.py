"""Stage `usage`: the run's counters and what this call would spend, for the policy and for
the budget.

Reads: the run (`ctx.run_id`, from the token's `run_id` claim or `X-Agent-Run-Id`) in the
store; the tool's `spend` argument. Sets: `ctx.usage` (a call without a run id has no run
budget and zero counters), `ctx.spend`. Refuses: 503 `store_unavailable`; 400
`invalid_arguments` for a spend argument that is not a non-negative number (the spec loader
and the schema already make sure of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.state.budgets import Usage, spend_of

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def usage(ctx: CallContext, rt: Runtime) -> None:
    ctx.spend = spend_of(ctx.call.spec.spend, ctx.call.args)
    if ctx.run_id is None:
        ctx.usage = Usage()
        return
    ctx.usage = await rt.store.usage(ctx.principal.tenant or "", ctx.run_id)
