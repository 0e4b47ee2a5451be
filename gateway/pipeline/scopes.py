"""Stage `scopes`: the token must carry every scope the tool spec lists.

Reads: `ctx.spec.scopes`, `ctx.principal.scopes`. Refuses: 403 `insufficient_scope`, naming
the missing scopes (RFC 6750 `WWW-Authenticate` with `error="insufficient_scope"`).
"""

from __future__ import annotations

from gateway.context import CallContext, Runtime
from gateway.core.errors import InsufficientScope


async def scopes(ctx: CallContext, rt: Runtime) -> None:
    assert ctx.spec is not None and ctx.principal is not None
    missing = sorted(set(ctx.spec.scopes) - ctx.principal.scopes)
    if missing:
        raise InsufficientScope(
            f"the token lacks scope {' '.join(missing)} for tool {ctx.spec.name}",
            missing_scopes=missing,
            headers={"WWW-Authenticate": f'Bearer realm="toolgate", error="insufficient_scope", '
                                         f'scope="{" ".join(ctx.spec.scopes)}"'})
