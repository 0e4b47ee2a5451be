"""Stage `claim`: take the Idempotency-Key for this request, just before it is sent.

Reads: the policy's decision, the key. Sets: `ctx.claimed` (the handler stores the final
answer under it), or `ctx.bound` when another request completed the same call first.
Runs only for a call about to be forwarded. Of concurrent requests with one key — on any
replica — exactly one wins the claim; the others get 409 `idempotency_in_flight` (or 422
`idempotency_key_reused` for another call). A claim left by a crashed gateway is taken
over once its lease (`idempotency.lease_seconds`) has run out.
"""

from __future__ import annotations

import time

from gateway.context import CallContext, Runtime
from gateway.decision import Action
from gateway.errors import IdempotencyInFlight, IdempotencyKeyReused
from gateway.idempotency import ClaimState, Scope, fingerprint
from gateway.specs import Mode


async def claim(ctx: CallContext, rt: Runtime) -> None:
    spec, principal = ctx.spec, ctx.principal
    assert spec is not None and principal is not None and ctx.args is not None
    if (ctx.idempotency_key is None or ctx.policy is None
            or ctx.policy.action is not Action.ALLOW or spec.mode is Mode.SHADOW):
        return
    scope = Scope(principal.tenant or "", spec.name, ctx.idempotency_key)
    mine = fingerprint(ctx.call.method, spec.name, ctx.args, principal.sub)
    result = await rt.store.idem_claim(scope, mine, ctx.call.request_id, time.time(),
                                       rt.settings.idempotency_lease_s)
    if result.claimed:
        ctx.claimed = scope
        return
    record = result.record
    if record.fingerprint != mine:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different call")
    if record.state is ClaimState.DONE:
        ctx.bound = record
        return
    raise IdempotencyInFlight("a request with this Idempotency-Key is still running; "
                              "retry later", retry_after_s=1)
