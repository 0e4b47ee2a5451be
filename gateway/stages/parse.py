"""Stage `parse`: body size limit, then JSON.

Reads: the body, up to `limits.max_body_bytes`. Sets: `ctx.body` (the exact bytes, which are
what the upstream receives) and `ctx.body_args`. Refuses: 413 `body_too_large`, 400
`invalid_json` (not JSON, or JSON that is not an object). An empty body is `{}`.
"""

from __future__ import annotations

import orjson

from gateway.context import CallContext, Runtime
from gateway.errors import InvalidJson


async def parse(ctx: CallContext, rt: Runtime) -> None:
    ctx.body = await ctx.call.read_body(rt.settings.max_body_bytes)
    if not ctx.body.strip():
        return
    try:
        value = orjson.loads(ctx.body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") \
            from None
    if not isinstance(value, dict):
        raise InvalidJson("the body must be a JSON object of arguments")
    ctx.body_args = value
