"""Stage `idempotency`: the `Idempotency-Key` header, where the tool asks for one.

Reads: `Idempotency-Key`, `ctx.spec.idempotency`, what the store holds for the key (scope
tenant, tool, key). Sets: `ctx.idempotency_key` (None for tools with `idempotency: none`,
whose key is neither checked nor forwarded), and `ctx.bound` when the key already has an
answer: its held call (202 while it waits, its result once executed — never held twice) or
its completed call (replayed with `Idempotent-Replayed: true`). The pipeline stops there,
so a replay is never decided again. Refuses: 400 `idempotency_key_required` when a
`required` tool gets none; 400 `idempotency_key_invalid` for a key over 255 characters or
outside printable ASCII; 422 `idempotency_key_reused` when the key was used for another
call (other arguments, method, or principal); 409 `idempotency_in_flight` while the first
request with the key is still running; 503 `store_unavailable`.

Only a claim (stage `claim`, just before forwarding) stores anything: a request refused by
validation or policy leaves the key free, as with Stripe.
"""

from __future__ import annotations

import re
import time

from gateway.bundle.specs import Idempotency
from gateway.context import CallContext, Runtime
from gateway.core.errors import (
    IdempotencyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
)
from gateway.state.idempotency import ClaimState, Scope, fingerprint
from gateway.store.base import call_hash

MAX_KEY_LENGTH = 255
_KEY = re.compile(r"^[\x21-\x7e]+$")


async def idempotency(ctx: CallContext, rt: Runtime) -> None:
    assert ctx.spec is not None
    if ctx.spec.idempotency is Idempotency.NONE:
        return
    key = ctx.call.headers.get("Idempotency-Key")
    if key is None or not key.strip():
        if ctx.spec.idempotency is Idempotency.REQUIRED:
            raise IdempotencyKeyRequired(f"tool {ctx.spec.name} requires an Idempotency-Key "
                                         "header")
        return
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise IdempotencyKeyInvalid(f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable "
                                    "ASCII characters")
    ctx.idempotency_key = key
    assert ctx.principal is not None and ctx.args is not None
    principal, args = ctx.principal, ctx.args
    held = await rt.store.find_approval(principal.tenant, ctx.spec.name, key)
    if held is not None:
        if held.call_hash != call_hash(ctx.spec.name, args, principal.sub, principal.tenant):
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different call; "
                                       "use a new key for a new call")
        ctx.bound = held
        return
    record = await rt.store.idem_get(Scope(principal.tenant or "", ctx.spec.name, key))
    if record is None:
        return
    # SECURITY: the fingerprint includes the principal, so one principal can never replay
    # another's stored answer, even inside one tenant.
    if record.fingerprint != fingerprint(ctx.call.method, ctx.spec.name, args, principal.sub):
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different call; "
                                   "use a new key for a new call")
    if record.state is ClaimState.DONE:
        ctx.bound = record
    elif record.lease_until > time.time():
        raise IdempotencyInFlight("a request with this Idempotency-Key is still running; "
                                  "retry later", retry_after_s=1)
    # else: its gateway died mid-call; the claim stage takes the key over
