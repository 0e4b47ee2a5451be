"""The `forward` act: send the planned call, record its outcome, settle its key and budget.

The plan is sent as it is (`gateway.upstreams.client`). Whatever happens once the request
may have reached the upstream — an answer of any status, a broken answer, a timeout — is the
call's final answer: it is stored under the idempotency key (5xx and the gateway's own
502/504 included, as Stripe does), the outcome record is written, and the call keeps its
reservation, spend included: the upstream may have acted (DESIGN §6). Only a call the
gateway knows was never executed — the upstream could not be connected to, or the decision
record could not be written — gives back its key and its reservation (`withdraw`), so the
agent may simply try again.

When tracing is on, the request to the upstream is a child span of the call's
(`gateway.tracing`), failed with the gateway's code (502/504) or the upstream's 4xx/5xx.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from gateway.act.answers import Reply, error_reply
from gateway.audit import records
from gateway.audit.call import CallAudit
from gateway.core.context import CallContext
from gateway.core.decision import Action
from gateway.core.errors import GatewayError, UpstreamUnreachable
from gateway.state.idempotency import Answer

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.upstreams.client import UpstreamResponse

log = logging.getLogger("toolgate")
SETTLE_ATTEMPTS = 10  # about a minute, well inside the claim's lease


async def forward(ctx: CallContext, rt: Runtime, audit: CallAudit) -> Reply:
    spec, facts = ctx.call.spec, ctx.call.facts
    audit.expect_outcome()
    try:
        resp = await _send(ctx, rt)
    except GatewayError as exc:
        rt.metrics.upstream.labels(spec.name, str(exc.code)).inc()
        unsent = isinstance(exc, UpstreamUnreachable)
        audit.outcome(records.outcome(
            error=str(exc.code), status=exc.status, sent=not unsent,
            total_s=rt.clock.monotonic() - facts.started, policy_ms=round(ctx.policy_ms, 3)))
        reply = error_reply(exc, facts.request_id, str(Action.ALLOW))
        if unsent:
            await withdraw(ctx, rt)
        else:
            await settle(ctx, rt, Answer(reply.status, reply.content_type, reply.body))
        return reply
    output_valid = None
    if spec.output_validator is not None and 200 <= resp.status < 300:
        output_valid = _output_valid(spec.output_validator, resp.body)
        rt.metrics.output_schema.labels(spec.name, "pass" if output_valid else "fail").inc()
    total = rt.clock.monotonic() - facts.started
    m = rt.metrics
    m.upstream.labels(spec.name, f"{resp.status // 100}xx").inc()
    m.upstream_latency.labels(spec.name).observe(resp.latency_ms / 1000)
    m.overhead.labels(spec.name).observe(max(0.0, total - resp.latency_ms / 1000))
    audit.outcome(records.outcome(
        status=resp.status, upstream_status=resp.status, output_valid=output_valid,
        total_s=total, policy_ms=round(ctx.policy_ms, 3), upstream_ms=resp.latency_ms))
    content_type = resp.headers.pop("Content-Type", None)
    await settle(ctx, rt, Answer(resp.status, content_type, resp.body))
    return Reply(resp.status, resp.body, str(Action.ALLOW), resp.headers, content_type)


async def _send(ctx: CallContext, rt: Runtime) -> UpstreamResponse:
    """Send the plan; when tracing is on, inside the call's upstream span."""
    spec, trace = ctx.call.spec, ctx.call.facts.trace
    if trace is None:
        return await rt.upstreams.send(ctx.plan, spec.timeout_ms)
    with trace.upstream(spec) as span:
        resp = await rt.upstreams.send(ctx.plan, spec.timeout_ms)
        span.status(resp.status)
        return resp


def _output_valid(validator: Any, body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return bool(validator.is_valid(value))


async def settle(ctx: CallContext, rt: Runtime, answer: Answer) -> None:
    """Store the answer under the key. The answer is already known, so a store error must
    not lose it (the key would later be taken over and the call sent again): it is retried
    in the background while the agent gets its answer."""
    if not ctx.committed or ctx.claim is None:
        return
    claim = ctx.claim
    request_id = ctx.call.facts.request_id

    async def store() -> bool:
        try:
            await rt.store.settle(claim, answer, rt.clock.time())
        except GatewayError as exc:
            log.warning("settling %s failed: %s", request_id, exc.message)
            return False
        return True

    async def retry() -> None:
        delay = 0.2
        for _ in range(SETTLE_ATTEMPTS):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if await store():
                return
        log.critical("the answer of %s could not be stored under its idempotency key",
                     request_id)

    if not await store():
        rt.background.spawn(retry(), name=f"settle {request_id}")


async def withdraw(ctx: CallContext, rt: Runtime) -> None:
    """Give back the key and the reservation of a committed call that was not sent."""
    if not ctx.committed:
        return
    try:
        # Never sent: neither its spend nor its call counts.
        await rt.store.undo_forward(ctx.claim, ctx.reservation, rt.clock.time())
    except GatewayError:
        # The claim's lease runs out on its own; the reservation stays spent (fail closed).
        log.warning("could not undo the reservation of %s", ctx.call.facts.request_id)
    ctx.committed = False
