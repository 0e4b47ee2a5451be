"""Stage `commit`: take the key and the budget of a call about to be forwarded — at once.

Reads: the verdict the facts give so far (only a call whose act is `forward` commits), the
key claim, the run and the tenant's limits, the tool's `spend` argument. Sets:
`ctx.committed` and `ctx.reservation` (the hold act or the forward act give them back if the
call is never sent), or `ctx.answered` when another request took the key first and
completed the same call. One store transaction claims the key and reserves the budget, so
of concurrent requests with one key — on any replica — exactly one is forwarded and counts;
a retry that loses the race costs the run nothing. A held call takes its key in the hold
act instead, in the same row, so a key is executed once or held once, never both.

Refuses: 429 `budget_exceeded`, naming the budget (the key stays free); 409
`idempotency_in_flight` or 422 `idempotency_key_reused` for a lost race; 503
`store_unavailable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.core.decision import Act
from gateway.core.errors import IdempotencyInFlight
from gateway.state.budgets import reservation
from gateway.state.idempotency import judge

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def commit(ctx: CallContext, rt: Runtime) -> None:
    if ctx.verdict().act is not Act.FORWARD:
        return
    spec, principal = ctx.call.spec, ctx.principal
    wanted = reservation(rt.settings.budgets, principal.tenant, ctx.run_id, spec.name,
                         ctx.spend or {})
    if ctx.claim is None and wanted is None:
        return
    now = rt.clock.time()
    taken = await rt.store.commit_forward(ctx.claim, wanted, now)
    if taken is not None:
        assert ctx.claim is not None  # only a claim can find its key taken
        ctx.answered = judge(taken, ctx.claim, now)
        if ctx.answered is None:  # the store takes over a lapsed claim itself; not here
            raise IdempotencyInFlight("the Idempotency-Key is being taken over; retry",
                                      retry_after_s=1)
        return
    ctx.committed = True
    ctx.reservation = wanted
