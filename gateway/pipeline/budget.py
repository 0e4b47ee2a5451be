"""Stage `budget`: reserve the call against its run's budget, atomically; the last stage.

Reads: the policy's decision, the run, the tenant's limits, the tool's `spend` argument.
Sets: `ctx.reserved` (the spend to give back if the call fails or is not sent). Runs only
for a call about to be forwarded: a denied, held or shadowed call consumes nothing (a held
call is reserved when it is executed). Refuses: 429 `budget_exceeded`, naming the budget;
503 `store_unavailable`. The store checks and counts in one transaction, so concurrent
calls on any number of replicas cannot overshoot.
"""

from __future__ import annotations

import time

from gateway.bundle.specs import Mode
from gateway.context import CallContext, Runtime
from gateway.core.decision import Action


def spend_of(ctx: CallContext) -> dict[str, float]:
    spec, args = ctx.spec, ctx.args or {}
    assert spec is not None
    value = args.get(spec.spend) if spec.spend else None
    if spec.spend is None or not isinstance(value, int | float) or isinstance(value, bool):
        return {}
    return {spec.spend: float(value)}


async def budget(ctx: CallContext, rt: Runtime) -> None:
    assert ctx.spec is not None and ctx.principal is not None
    if (ctx.run_id is None or ctx.policy is None or ctx.policy.action is not Action.ALLOW
            or ctx.spec.mode is Mode.SHADOW):
        return
    limits = rt.settings.budgets.for_tenant(ctx.principal.tenant)
    if limits.empty:
        return
    spend = spend_of(ctx)
    ctx.usage = await rt.store.reserve(ctx.principal.tenant or "", ctx.run_id, ctx.spec.name,
                                       spend, limits, time.time())
    ctx.reserved = spend
