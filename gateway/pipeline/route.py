"""Stage `route`: which tool this is, and the call's arguments.

Reads: method, raw path, query, `ctx.body_args`. Sets: `ctx.spec`, `ctx.path_params`,
`ctx.args` (path parameters + query parameters + body members). Refuses: 403
`tool_not_allowed` when no spec declares the route; 400 `invalid_arguments` for a path
parameter that is not one segment or a name given twice.
"""

from __future__ import annotations

from typing import Any

from gateway.bundle.routes import decode_params
from gateway.context import CallContext, Runtime
from gateway.core.errors import InvalidArguments, ToolNotAllowed


async def route(ctx: CallContext, rt: Runtime) -> None:
    found = rt.specs.routes.match(ctx.call.method, ctx.call.raw_path)
    if found is None:
        raise ToolNotAllowed(f"no tool is declared for {ctx.call.method} {ctx.call.raw_path}")
    spec, raw_params = found
    ctx.spec = spec
    ctx.path_params = decode_params(spec.route, raw_params)
    args: dict[str, Any] = dict(ctx.path_params)
    # SECURITY: a name given twice could validate one value and forward another.
    for name, value in ctx.call.query:
        if name in args:
            raise InvalidArguments(f"argument {name!r} is given more than once")
        args[name] = value
    for name, value in ctx.body_args.items():
        if name in args:
            raise InvalidArguments(f"argument {name!r} is given more than once")
        args[name] = value
    ctx.args = args
