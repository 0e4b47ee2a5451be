"""Stage `idempotency`: the `Idempotency-Key` header, where the tool asks for one.

Reads: `Idempotency-Key`, `ctx.spec.idempotency`, the held calls in the store. Sets:
`ctx.idempotency_key` (None for tools with `idempotency: none`, whose key is neither checked
nor forwarded), and `ctx.bound` when this key already has a held call — a retry is answered
from that call (202 while it waits, its stored result once executed), never held a second
time, whatever the policy would say now. Refuses: 400 `idempotency_key_required` when a
`required` tool gets none; 400 `idempotency_key_invalid` for a key over 255 characters or
outside printable ASCII; 422 `idempotency_key_reused` when the key's held call was made with
other arguments or by another principal; 503 `store_unavailable`.
"""

from __future__ import annotations

import re

from gateway.context import CallContext, Runtime
from gateway.errors import IdempotencyKeyInvalid, IdempotencyKeyRequired, IdempotencyKeyReused
from gateway.specs import Idempotency
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
    held = await rt.store.find_approval(ctx.principal.tenant, ctx.spec.name, key)
    if held is None:
        return
    if held.call_hash != call_hash(ctx.spec.name, ctx.args, ctx.principal.sub,
                                   ctx.principal.tenant):
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different call; "
                                   "use a new key for a new call")
    ctx.bound = held
