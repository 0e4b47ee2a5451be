"""Stage `authenticate`: the agent's bearer token.

Reads: the call's credential (`Authorization`) and run hint (`X-Agent-Run-Id`). Sets:
`ctx.principal`, `ctx.run_id` (the token's `run_id` claim wins over the hint: it is
signed; the hint is used only when the token has no claim). Refuses: 401
`unauthenticated` with `WWW-Authenticate` for a missing, malformed, expired,
not-yet-valid, wrongly signed or wrongly addressed token, and for a `run_id` claim that is
not a usable run id (never replaced by the hint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.auth import MAX_RUN_ID, bearer_principal
from gateway.core.context import CallContext

if TYPE_CHECKING:
    from gateway.runtime import Runtime



async def authenticate(ctx: CallContext, rt: Runtime) -> None:
    ctx.principal = bearer_principal(ctx.call.authorization, rt.verifier)
    run_id = ctx.principal.run_id or ctx.call.run_hint or None
    ctx.run_id = run_id[:MAX_RUN_ID] if run_id else None
