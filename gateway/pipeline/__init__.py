"""The ordered stage list, and the loop that runs it into a `Verdict`.

Every stage has one signature, `async (ctx, rt) -> None`: it sets facts on `ctx` or raises a
`GatewayError`. The order is the contract; why each stage sits where it does:

1. parse         — the body limit comes first: nothing reads an oversized body.
2. route         — which tool (and its arguments) decides everything after it.
3. authenticate  — before anything looks at state, so no stage acts for an unknown caller
                   (and, with idempotency replay, one principal never sees another's result).
4. killswitch    — right after we know who calls which tool: a stopped call touches no state.
5. scopes        — the token must be allowed this tool before its arguments are judged.
6. idempotency   — a missing required key is refused before the schema, like Stripe/IETF;
                   a retry of a held or completed call is answered from it here and the
                   pipeline stops, so a changed policy can never run the same call twice.
7. validate      — the policy only ever sees arguments that match the schema.
8. usage         — the run's counters, so the policy can act on them too.
9. policy        — it sees the verified principal, valid arguments and the run.
10. claim        — the idempotency key is claimed only by a request the policy lets through
                   (nothing stored for the others), and before the budget, so a retry that
                   loses the race (409, or a replay) never counts against the run.
11. budget       — last, just before sending: only a call that will be sent reserves.

Fail closed by construction: an exception a stage did not mean to raise is a deny carrying
that stage's name (`internal_error`), never logged-and-continued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from gateway.bundle.specs import Mode
from gateway.context import CallContext, Runtime
from gateway.core.decision import Verdict, decide
from gateway.core.errors import GatewayError, InternalError
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.budget import budget
from gateway.pipeline.claim import claim
from gateway.pipeline.idempotency import idempotency
from gateway.pipeline.killswitch import killswitch
from gateway.pipeline.parse import parse
from gateway.pipeline.policy import policy
from gateway.pipeline.route import route
from gateway.pipeline.scopes import scopes
from gateway.pipeline.usage import usage
from gateway.pipeline.validate import validate
from gateway.store.base import Approval

Stage = Callable[[CallContext, Runtime], Awaitable[None]]
log = logging.getLogger("toolgate")

STAGES: tuple[tuple[str, Stage], ...] = (
    ("parse", parse),
    ("route", route),
    ("authenticate", authenticate),
    ("killswitch", killswitch),
    ("scopes", scopes),
    ("idempotency", idempotency),
    ("validate", validate),
    ("usage", usage),
    ("policy", policy),
    ("claim", claim),
    ("budget", budget),
)


async def run(ctx: CallContext, rt: Runtime) -> Verdict:
    error: GatewayError | None = None
    for name, stage in STAGES:
        ctx.stage = name
        try:
            await stage(ctx, rt)
        except GatewayError as exc:
            error = exc
            break
        except Exception:
            log.exception("stage %s failed on %s", name, ctx.call.request_id)
            error = InternalError(f"the gateway failed in stage {name}; nothing was done")
            break
        if ctx.bound is not None:
            break
    shadow = ctx.spec is not None and ctx.spec.mode is Mode.SHADOW
    bound: Literal["held", "replay"] | None = (
        None if ctx.bound is None else "held" if isinstance(ctx.bound, Approval) else "replay")
    # The stage that decided: the one that refused or bound the call, else the policy.
    deciding = ctx.stage if error is not None or bound is not None else "policy"
    return decide(deciding, error, ctx.policy, shadow, bound=bound)
