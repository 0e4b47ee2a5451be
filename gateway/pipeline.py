"""The ordered stage list, and the loop that runs it into a `Verdict`.

Every stage has one signature, `async (ctx, rt) -> None`: it sets facts on `ctx` or raises a
`GatewayError`. The order is the contract; why each stage sits where it does:

1. parse         — the body limit comes first: nothing reads an oversized body.
2. route         — which tool (and its arguments) decides everything after it.
3. authenticate  — before anything looks at state, so no stage acts for an unknown caller
                   (and, with idempotency replay, one principal never sees another's result).
4. scopes        — the token must be allowed this tool before its arguments are judged.
5. idempotency   — a missing required key is refused before the schema, like Stripe/IETF;
                   a retry of a held call is bound to it here and the pipeline stops, so
                   a changed policy can never hold (or run) the same call twice.
6. validate      — the policy only ever sees arguments that match the schema.
7. policy        — last: it sees the verified principal and valid arguments.

Fail closed by construction: an exception a stage did not mean to raise is a deny carrying
that stage's name (`internal_error`), never logged-and-continued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.context import CallContext, Runtime
from gateway.decision import Verdict, decide
from gateway.errors import GatewayError, InternalError
from gateway.specs import Mode
from gateway.stages.authenticate import authenticate
from gateway.stages.idempotency import idempotency
from gateway.stages.parse import parse
from gateway.stages.policy import policy
from gateway.stages.route import route
from gateway.stages.scopes import scopes
from gateway.stages.validate import validate

Stage = Callable[[CallContext, Runtime], Awaitable[None]]
log = logging.getLogger("toolgate")

STAGES: tuple[tuple[str, Stage], ...] = (
    ("parse", parse),
    ("route", route),
    ("authenticate", authenticate),
    ("scopes", scopes),
    ("idempotency", idempotency),
    ("validate", validate),
    ("policy", policy),
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
    return decide(ctx.stage, error, ctx.policy, shadow, bound=ctx.bound is not None)
