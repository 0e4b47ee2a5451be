"""Stage `claim`: take the Idempotency-Key for this request, before it is sent.

Reads: the policy's decision, the key. Sets: `ctx.claimed` (the handler stores the final
answer under it), or `ctx.bound` when another request completed the same call first.
Runs only for a call about to be forwarded. Of concurrent requests with one key — on any
replica — exactly one wins the claim; the others get 409 `idempotency_in_flight` (or 422
`idempotency_key_reused` for another call). A claim left by a crashed gateway is taken
over once its lease has run out: `idempotency.lease_seconds`, but never less than the
tool's timeout plus `LEASE_MARGIN_S`, so a claim cannot lapse while its call is still
waiting on the upstream or storing the answer.
"""

from __future__ import annotations

import time

from gateway.bundle.specs import Mode
from gateway.context import CallContext, Runtime
from gateway.core.decision import Action
from gateway.core.errors import IdempotencyInFlight, IdempotencyKeyReused
from gateway.state.idempotency import ClaimState, Scope, fingerprint

LEASE_MARGIN_S = 120  # covers storing the answer, retried for about a minute (handler)


async def claim(ctx: CallContext, rt: Runtime) -> None:
    spec, principal = ctx.spec, ctx.principal
    assert spec is not None and principal is not None and ctx.args is not None
    if (ctx.idempotency_key is None or ctx.policy is None
            or ctx.policy.action is not Action.ALLOW or spec.mode is Mode.SHADOW):
        return
    scope = Scope(principal.tenant or "", spec.name, ctx.idempotency_key)
    mine = fingerprint(ctx.call.method, spec.name, ctx.args, principal.sub)
    lease = max(rt.settings.idempotency_lease_s, spec.timeout_ms / 1000 + LEASE_MARGIN_S)
    result = await rt.store.idem_claim(scope, mine, ctx.call.request_id, time.time(), lease)
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
