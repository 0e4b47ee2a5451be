"""Stage `parse`: body size limit, then JSON.

Reads: the body, up to `limits.max_body_bytes`. Sets: `ctx.body` (the exact bytes, which are
what the upstream receives) and `ctx.body_args`. Refuses: 413 `body_too_large`, 400
`invalid_json` (not JSON, JSON that is not an object, an object with a name given twice, or
NaN/Infinity). An empty body is `{}`.

SECURITY: the upstream receives the raw bytes, so the gateway must see exactly one meaning
in them. With `{"amount": 5000, "amount": 10}` a parser that keeps the last value would let
the policy approve 10 while an upstream that keeps the first refunds 5000; such a body is
refused, as are the non-JSON constants some parsers accept and others reject.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.context import CallContext, Runtime
from gateway.errors import InvalidJson


class _Ambiguous(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _Ambiguous(f"the name {name!r} is given twice in one object")
        out[name] = value
    return out


def _constant(name: str) -> Any:
    raise _Ambiguous(f"{name} is not JSON")


def loads_strict(body: bytes) -> Any:
    """JSON with one meaning: no repeated names, no NaN/Infinity."""
    return json.loads(body, object_pairs_hook=_object, parse_constant=_constant)


async def parse(ctx: CallContext, rt: Runtime) -> None:
    ctx.body = await ctx.call.read_body(rt.settings.max_body_bytes)
    if not ctx.body.strip():
        return
    try:
        value = loads_strict(ctx.body)
    except _Ambiguous as exc:
        raise InvalidJson(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") \
            from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidJson("the body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise InvalidJson("the body must be a JSON object of arguments")
    ctx.body_args = value
