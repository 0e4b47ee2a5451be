"""The ordered stage list, and the loop that runs it into a `Verdict`.

The pipeline starts where every entrance has left a `ToolCall` (tool, arguments, raw body,
request facts); it knows nothing of HTTP. Every stage has one signature,
`async (ctx, rt) -> None`: it sets facts on `ctx` or raises a `GatewayError`. The order is
the contract; why each stage sits where it does:

1. authenticate  — before anything looks at state, so no stage acts for an unknown caller
                   (and, with idempotency replay, one principal never sees another's result).
2. killswitch    — right after we know who calls which tool: a stopped call touches no state.
3. scopes        — the token must be allowed this tool before its arguments are judged.
4. idempotency   — a missing required key is refused before the schema, like Stripe/IETF;
                   a retry of a held or completed call is answered from it here and the
                   pipeline stops, so a changed policy can never run the same call twice.
5. validate      — the policy only ever sees arguments that match the schema.
6. plan          — the exact outbound request, fixed before the policy decides on it: what
                   is allowed, or shown to an approver, is what would be sent.
7. usage         — the run's counters, so the policy can act on them too.
8. policy        — it sees the verified principal, valid arguments and the run.
9. commit        — last, for a call about to be forwarded: its key and its budget are taken
                   in one transaction, so a retry that loses the race (409, or a replay)
                   never counts against the run, and only a call that will be sent reserves.
                   (A held call takes its key in the hold act, in one transaction with the
                   held call and its decision record.)

Entrances run two steps of their own before this (`route`, `parse`); their refusals are
decided by the same `decide` and audited the same way (`gateway.act.handle`).

Fail closed by construction: an exception a stage did not mean to raise is a deny carrying
that stage's name (`internal_error`), never logged-and-continued.

Each stage's time is observed in `toolgate_stage_seconds{stage}` (`gateway.metrics`). When
tracing is on, each stage that runs is a child span of the call's span, named for the
stage and failed with the code it refused with (`gateway.tracing`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.core.decision import Verdict
from gateway.core.errors import GatewayError, InternalError
from gateway.core.stage import Stage
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.commit import commit
from gateway.pipeline.idempotency import idempotency
from gateway.pipeline.killswitch import killswitch
from gateway.pipeline.plan import plan
from gateway.pipeline.policy import policy
from gateway.pipeline.scopes import scopes
from gateway.pipeline.usage import usage
from gateway.pipeline.validate import validate

if TYPE_CHECKING:
    from gateway.runtime import Runtime

StageFn = Callable[[CallContext, "Runtime"], Awaitable[None]]
log = logging.getLogger("toolgate")

STAGES: tuple[tuple[Stage, StageFn], ...] = (
    (Stage.AUTHENTICATE, authenticate),
    (Stage.KILLSWITCH, killswitch),
    (Stage.SCOPES, scopes),
    (Stage.IDEMPOTENCY, idempotency),
    (Stage.VALIDATE, validate),
    (Stage.PLAN, plan),
    (Stage.USAGE, usage),
    (Stage.POLICY, policy),
    (Stage.COMMIT, commit),
)


async def run(ctx: CallContext, rt: Runtime) -> Verdict:
    error: GatewayError | None = None
    trace = ctx.call.facts.trace  # None when tracing is off: then no span at all
    timers = rt.metrics.stages
    for name, stage in STAGES:
        ctx.stage = name
        started = time.perf_counter()
        try:
            if trace is None:
                await stage(ctx, rt)
            else:
                with trace.stage(name):
                    await stage(ctx, rt)
        except GatewayError as exc:
            error = exc
            break
        except Exception:
            log.exception("stage %s failed on %s", name, ctx.call.facts.request_id)
            error = InternalError(f"the gateway failed in stage {name}; nothing was done")
            break
        finally:
            timers[name].observe(time.perf_counter() - started)
        if ctx.answered is not None:
            break
    verdict = ctx.verdict(error)
    if trace is not None:
        trace.decided(verdict, ctx.known_principal)
    return verdict
