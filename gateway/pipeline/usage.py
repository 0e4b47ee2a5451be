"""Stage `usage`: the run's counters, for the policy and for the budget.

Reads: the run (`ctx.run_id`, from the token's `run_id` claim or `X-Agent-Run-Id`) in the
store. Sets: `ctx.usage`. A call without a run id has no run budget and zero counters.
Refuses: 503 `store_unavailable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.state.budgets import Usage

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def usage(ctx: CallContext, rt: Runtime) -> None:
    if ctx.run_id is None:
        ctx.usage = Usage()
        return
    ctx.usage = await rt.store.usage(ctx.principal.tenant or "", ctx.run_id)
