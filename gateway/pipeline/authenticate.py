"""Stage `authenticate`: the agent's bearer token.

Reads: the call's credential (`Authorization`) and run hint (`X-Agent-Run-Id`). Sets:
`ctx.principal`, `ctx.run_id` (the token's `run_id` claim wins over the hint: it is
signed; the hint is used only when the token has no claim). Refuses: 401
`unauthenticated` with `WWW-Authenticate` for a missing, malformed, expired,
not-yet-valid, wrongly signed or wrongly addressed token, and for a claim that is present
but not usable as it is — a `run_id` claim too, never replaced by the hint; 400
`invalid_arguments` for a hint (read only when there is no claim) that is not a run id by
the same rule as the claim: 1 to 128 printable characters. Awaits only for a token
naming a key `auth.jwks_url` may yet serve (one shared, rate-limited fetch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.auth import MAX_RUN_ID, KeyMiss, bearer_principal, is_run_id
from gateway.core.context import CallContext
from gateway.core.errors import InvalidArguments

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def authenticate(ctx: CallContext, rt: Runtime) -> None:
    try:
        ctx.principal = bearer_principal(ctx.call.authorization, rt.verifier)
    except KeyMiss as miss:
        # A key the source may yet fetch (`auth.jwks_url` after a rotation): wait for its
        # fetch. Inline, not `authenticate_bearer`: the common path awaits nothing.
        ctx.principal = await miss.retry()
    if ctx.principal.run_id is not None:
        ctx.run_id = ctx.principal.run_id
        return
    hint = ctx.call.run_hint
    # SECURITY: the hint reaches the run's budget key, the policy and the audit record as it
    # is: refused, never cut or cleaned. A byte that is not UTF-8 arrives as a lone
    # surrogate, which no record can hold (it was a 500 with no decision record); a cut
    # would make two runs one. The message never repeats the value.
    if hint is not None and not is_run_id(hint):
        raise InvalidArguments(f"X-Agent-Run-Id must be 1 to {MAX_RUN_ID} printable "
                               "characters (UTF-8, no control characters)")
    ctx.run_id = hint
