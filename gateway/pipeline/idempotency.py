"""Stage `idempotency`: the `Idempotency-Key`, where the tool asks for one.

Reads: the call's key hint, the spec's `idempotency`, what the store holds for the key
(scope tenant, tool, key) in one lookup. Sets: `ctx.idempotency_key` (None for tools with
`idempotency: none`, whose key is neither checked nor forwarded), `ctx.claim` (what taking
the key will write), and `ctx.answered` when the key already has an answer: its held call
(202 while it waits, its result once executed — never held twice) or its completed call
(replayed with `Idempotent-Replayed: true`). The pipeline stops there, so a retry is never
decided again. Refuses: 400 `idempotency_key_required` when a `required` tool gets none;
400 `idempotency_key_invalid` for a key over 255 characters or outside printable ASCII; 422
`idempotency_key_reused` when the key was used for another call (other arguments, method,
or principal); 409 `idempotency_in_flight` while the first request with the key is still
running; 503 `store_unavailable`.

Nothing is stored here: a request refused by validation, policy or budget leaves the key
free, as with Stripe. The key is taken by stage `commit` (forwarded calls) or by the hold
act (held calls), in the same row either way.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.approvals.model import call_hash
from gateway.bundle.specs import Idempotency
from gateway.core.context import CallContext
from gateway.core.errors import IdempotencyKeyInvalid, IdempotencyKeyRequired
from gateway.state.idempotency import KeyClaim, Scope, fingerprint, judge, lease_for

if TYPE_CHECKING:
    from gateway.runtime import Runtime

MAX_KEY_LENGTH = 255
_KEY = re.compile(r"^[\x21-\x7e]+$")


async def idempotency(ctx: CallContext, rt: Runtime) -> None:
    spec = ctx.call.spec
    if spec.idempotency is Idempotency.NONE:
        return
    key = ctx.call.key_hint
    if key is None or not key.strip():
        if spec.idempotency is Idempotency.REQUIRED:
            raise IdempotencyKeyRequired(f"tool {spec.name} requires an Idempotency-Key "
                                         "header")
        return
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise IdempotencyKeyInvalid(f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} printable "
                                    "ASCII characters")
    ctx.idempotency_key = key
    principal, now = ctx.principal, rt.clock.time()
    scope = Scope(principal.tenant or "", spec.name, key)
    args = ctx.call.args
    ctx.claim = KeyClaim(scope, fingerprint(spec.method, spec.name, args, principal.sub),
                         ctx.call.facts.request_id,
                         now + lease_for(rt.settings.idempotency_lease_s, spec.timeout_ms),
                         call_hash(spec.name, args, principal.sub, principal.tenant))
    state = await rt.store.key_state(scope)
    if state is not None:
        # else: a claim whose gateway died with its lease run out; `commit` takes it over
        ctx.answered = judge(state, ctx.claim, now)
