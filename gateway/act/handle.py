"""Carry out a verdict: the whole life of one tool call, audited first, every time.

`handle` runs the pipeline, writes the decision record (if that fails, nothing happens and
the agent gets 503 `audit_unavailable`), then dispatches on the verdict's act — it decides
nothing itself. `refuse` is the same for a request an entrance could not turn into a tool
call. `CallAudit` makes sure no exit path skips a record.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway import pipeline
from gateway.act.answers import Reply, error_reply, from_held, replay, shadow
from gateway.act.forward import forward, withdraw
from gateway.act.hold import hold
from gateway.audit import records
from gateway.audit.call import CallAudit
from gateway.bundle import Bundle
from gateway.bundle.specs import ToolSpec
from gateway.core.call import RequestFacts, ToolCall
from gateway.core.context import CallContext
from gateway.core.decision import Act, Action, Verdict, decide
from gateway.core.errors import GatewayError
from gateway.core.stage import Stage
from gateway.metrics import DECISION_RECORD

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def handle(call: ToolCall, bundle: Bundle, rt: Runtime) -> Reply:
    ctx = CallContext(call, bundle)
    facts = call.facts
    async with CallAudit(rt.audit, facts.request_id, facts.trace_id, bundle.revision,
                         call.spec.name) as audit:
        verdict = await pipeline.run(ctx, rt)
        if verdict.act is Act.HOLD:
            held = await hold(ctx, rt, verdict, audit)
            if isinstance(held, Reply):
                _observe(rt, facts, verdict, call.spec)
                return held
            verdict = held  # the key was taken meanwhile: answer from what it holds
        _observe(rt, facts, verdict, call.spec)
        started = time.perf_counter()
        try:
            audit.decision(records.decision(verdict, revision=bundle.revision, spec=call.spec,
                                            ctx=ctx, redactor=rt.redactor,
                                            elapsed_s=rt.clock.monotonic() - facts.started))
        except GatewayError as exc:
            await withdraw(ctx, rt)  # nothing is sent: give the budget and the key back
            return error_reply(exc, facts.request_id)
        rt.metrics.stages[DECISION_RECORD].observe(time.perf_counter() - started)
        return await _carry_out(ctx, rt, verdict, audit)


async def _carry_out(ctx: CallContext, rt: Runtime, verdict: Verdict,
                     audit: CallAudit) -> Reply:
    request_id = ctx.call.facts.request_id
    match verdict.act:
        case Act.FORWARD:
            return await forward(ctx, rt, audit)
        case Act.ANSWER_HELD:
            assert ctx.answered is not None and ctx.answered.approval is not None
            return from_held(ctx.answered.approval, request_id, rt.clock.time())
        case Act.REPLAY:
            assert ctx.answered is not None
            return replay(ctx.answered)
        case Act.SHADOW:
            return shadow(verdict)
        case Act.REFUSE:
            assert verdict.error is not None
            return error_reply(verdict.error, request_id)
        case Act.HOLD:  # pragma: no cover - a second hold never follows a lost race
            raise AssertionError("a hold is carried out by `hold`")


def refuse(facts: RequestFacts, stage: Stage, error: GatewayError, bundle: Bundle,
           rt: Runtime, spec: ToolSpec | None = None) -> Reply:
    """A request refused before it was a tool call — by an entrance (`route`, `parse`) or
    by the HTTP parser — decided and audited the same way. Synchronous: nothing to wait
    for, and the HTTP server's error path cannot await."""
    verdict = decide(stage, error, None, shadow=False)
    _observe(rt, facts, verdict, spec)
    audit = CallAudit(rt.audit, facts.request_id, facts.trace_id, bundle.revision,
                      spec.name if spec is not None else None)
    try:
        audit.decision(records.decision(verdict, revision=bundle.revision, spec=spec,
                                        redactor=rt.redactor,
                                        elapsed_s=rt.clock.monotonic() - facts.started))
    except GatewayError as exc:
        return error_reply(exc, facts.request_id)
    return error_reply(error, facts.request_id)


def _observe(rt: Runtime, facts: RequestFacts, verdict: Verdict, spec: ToolSpec | None) -> None:
    rt.metrics.calls.labels(spec.name if spec else "-", str(verdict.action),
                            verdict.code or "").inc()
    if verdict.action is Action.ALLOW and any(r.startswith("autonomy_ramp:")
                                              for r in verdict.reasons):
        rt.metrics.ramped.labels(spec.name if spec else "-").inc()
    if verdict.action is not Action.ALLOW or verdict.act is Act.SHADOW:
        rt.metrics.fallback.labels(str(verdict.action)).observe(
            rt.clock.monotonic() - facts.started)
