"""Stage `authenticate`: the agent's bearer token.

Reads: `Authorization`, `X-Agent-Run-Id`. Sets: `ctx.principal`, `ctx.run_id` (the token's
`run_id` claim wins over the header: it is signed). Refuses: 401 `unauthenticated` with
`WWW-Authenticate` for a missing, malformed, expired, not-yet-valid, wrongly signed or
wrongly addressed token.
"""

from __future__ import annotations

from gateway.auth import bearer_principal
from gateway.context import CallContext, Runtime

MAX_RUN_ID = 128


async def authenticate(ctx: CallContext, rt: Runtime) -> None:
    ctx.principal = bearer_principal(ctx.call.headers.get("Authorization"), rt.verifier)
    run_id = ctx.principal.run_id or ctx.call.headers.get("X-Agent-Run-Id") or None
    ctx.run_id = run_id[:MAX_RUN_ID] if run_id else None
