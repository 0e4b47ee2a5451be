"""Stage `scopes`: the token must carry every scope the tool spec lists.

Reads: the spec's `scopes`, the principal's. Refuses: 403 `insufficient_scope`, naming the
missing scopes (RFC 6750 `WWW-Authenticate` with `error="insufficient_scope"`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.core.errors import InsufficientScope

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def scopes(ctx: CallContext, rt: Runtime) -> None:
    spec = ctx.call.spec
    missing = sorted(set(spec.scopes) - ctx.principal.scopes)
    if missing:
        raise InsufficientScope(
            f"the token lacks scope {' '.join(missing)} for tool {spec.name}",
            missing_scopes=missing,
            headers={"WWW-Authenticate": f'Bearer realm="toolgate", error="insufficient_scope", '
                                         f'scope="{" ".join(spec.scopes)}"'})
