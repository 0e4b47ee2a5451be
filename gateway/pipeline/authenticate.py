"""Stage `authenticate`: the agent's bearer token.

Reads: the call's credential (`Authorization`) and run hint (`X-Agent-Run-Id`). Sets:
`ctx.principal`, `ctx.run_id` (the token's `run_id` claim wins over the hint: it is
signed). Refuses: 401 `unauthenticated` with `WWW-Authenticate` for a missing, malformed,
expired, not-yet-valid, wrongly signed or wrongly addressed token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.auth import bearer_principal
from gateway.core.context import CallContext

if TYPE_CHECKING:
    from gateway.runtime import Runtime

MAX_RUN_ID = 128


async def authenticate(ctx: CallContext, rt: Runtime) -> None:
    ctx.principal = bearer_principal(ctx.call.authorization, rt.verifier)
    run_id = ctx.principal.run_id or ctx.call.run_hint or None
    ctx.run_id = run_id[:MAX_RUN_ID] if run_id else None
