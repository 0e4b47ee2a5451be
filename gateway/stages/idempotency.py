"""Stage `idempotency`: the `Idempotency-Key` header, where the tool asks for one.

Reads: `Idempotency-Key`, `ctx.spec.idempotency`. Sets: `ctx.idempotency_key` (None for tools
with `idempotency: none`, whose key is neither checked nor forwarded). Refuses: 400
`idempotency_key_required` when a `required` tool gets none; 400 `idempotency_key_invalid`
for a key over 255 characters or with characters outside printable ASCII.
"""

from __future__ import annotations

import re

from gateway.context import CallContext, Runtime
from gateway.errors import IdempotencyKeyInvalid, IdempotencyKeyRequired
from gateway.specs import Idempotency

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
