"""Carry out a verdict: forward, queue for approval, or block — audited first, every time.

`handle` is the whole life of one tool call: run the pipeline, write the decision record
(if that fails, nothing happens and the agent gets 503 `audit_unavailable`), then act, then
write the outcome record. `CallAudit` makes sure no exit path skips a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from multidict import CIMultiDict

from gateway import pipeline
from gateway.audit.log import CallAudit, redact, trace_id
from gateway.context import Call, CallContext, Runtime
from gateway.core.decision import Action, Verdict
from gateway.core.errors import (
    BudgetExceeded,
    GatewayError,
    IdempotencyKeyReused,
    Killed,
    OutcomeUnknown,
    PolicyDenied,
    UpstreamError,
)
from gateway.pipeline.budget import spend_of
from gateway.state.idempotency import IdempotencyRecord
from gateway.store.base import (
    Approval,
    ApprovalKeyTaken,
    ApprovalStatus,
    StoredCall,
    call_hash,
    rfc3339,
)
from gateway.upstreams.client import forwarded_headers

JSON = "application/json"
log = logging.getLogger("toolgate")


@dataclass
class Reply:
    """What the entrance sends back; `decision` becomes `X-Toolgate-Decision`."""

    status: int
    body: bytes
    decision: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    content_type: str | None = JSON


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def error_reply(exc: GatewayError, request_id: str, decision: str = "deny") -> Reply:
    return Reply(exc.status, orjson.dumps(exc.body(request_id)), decision,
                 CIMultiDict(exc.headers))


def _stored_call(ctx: CallContext, rt: Runtime) -> StoredCall:
    spec = ctx.spec
    assert spec is not None
    return StoredCall(
        upstream=spec.upstream, method=spec.method,
        path=spec.forward.render(ctx.path_params), query=ctx.call.query_string,
        headers=forwarded_headers(ctx.call.headers, rt.forwarder.credential_headers),
        body=ctx.body, client_ip=ctx.call.source_ip, host=ctx.call.host,
        scheme=ctx.call.scheme, run_id=ctx.run_id, spend=spend_of(ctx))


async def handle(call: Call, rt: Runtime) -> Reply:
    ctx = CallContext(call)
    audit = CallAudit(rt.audit, decision_id=call.request_id,
                      trace_id=trace_id(call.headers.get("traceparent")))
    async with audit:
        verdict = await pipeline.run(ctx, rt)
        tool = ctx.spec.name if ctx.spec else "-"
        rt.metrics.calls.labels(tool, str(verdict.action), verdict.code or "").inc()
        if verdict.action is not Action.ALLOW or verdict.shadow:
            rt.metrics.fallback.labels(str(verdict.action)).observe(
                time.perf_counter() - call.started)
        approval_id = (ctx.bound.id if isinstance(ctx.bound, Approval) else new_id("apr")
                       if verdict.action is Action.REQUIRE_APPROVAL and not verdict.shadow
                       else None)
        forwarding = (verdict.action is Action.ALLOW and verdict.error is None
                      and not verdict.shadow and not verdict.bound)
        if not forwarding:
            await _unreserve(ctx, rt)
        try:
            audit.decision(**_decision_fields(ctx, rt, verdict, approval_id))
        except GatewayError as exc:
            await _unreserve(ctx, rt)  # nothing is sent: give the budget and the key back
            return error_reply(exc, call.request_id)
        if isinstance(ctx.bound, Approval):
            return from_held(ctx.bound, call.request_id)
        if ctx.bound is not None:
            return _replay(ctx.bound)
        # Shadow: whatever the policy decided is only reported (errors before the policy,
        # such as a bad token or bad arguments, are still errors).
        if verdict.shadow and (verdict.error is None or verdict.stage == "policy"):
            return Reply(200, orjson.dumps({"status": "shadow", "action": str(verdict.action),
                                            "reasons": list(verdict.reasons)}), "shadow")
        if verdict.error is not None:
            return error_reply(verdict.error, call.request_id)
        audit.expect_outcome()
        if verdict.action is Action.REQUIRE_APPROVAL:
            assert approval_id is not None
            return await _queue(ctx, rt, verdict, approval_id, audit)
        return await _forward(ctx, rt, audit)


async def _unreserve(ctx: CallContext, rt: Runtime) -> None:
    """Undo the budget reservation and the key claim of a call that will not be sent."""
    principal = ctx.principal
    try:
        if ctx.reserved is not None and principal is not None and ctx.run_id is not None:
            assert ctx.spec is not None
            # Never sent: neither its spend nor its call counts.
            await rt.store.release_spend(principal.tenant or "", ctx.run_id, ctx.reserved,
                                         time.time(), uncount=ctx.spec.name)
        if ctx.claimed is not None:
            await rt.store.idem_release(ctx.claimed, ctx.call.request_id)
    except GatewayError:
        # The claim's lease runs out on its own; the reservation stays spent (fail closed).
        log.warning("could not undo the reservation of %s", ctx.call.request_id)
    ctx.reserved = None
    ctx.claimed = None


def _replay(record: IdempotencyRecord) -> Reply:
    headers: CIMultiDict[str] = CIMultiDict({"Idempotent-Replayed": "true"})
    return Reply(record.status or 500, record.body or b"", str(Action.ALLOW), headers,
                 record.content_type)


SETTLE_ATTEMPTS = 10  # about a minute, well inside the claim's lease


async def _settle(ctx: CallContext, rt: Runtime, status: int, content_type: str | None,
                  body: bytes) -> None:
    """After the upstream answered (or failed): store the answer under the key, and give
    back the spend of a call that did not succeed. The answer is already known, so a store
    error must not lose it (the key would later be taken over and the call sent again): it
    is retried in the background while the agent gets its answer."""
    claimed, principal, run = ctx.claimed, ctx.principal, ctx.run_id
    spend = ctx.reserved if status >= 400 else None
    request_id = ctx.call.request_id

    async def store() -> bool:
        try:
            if claimed is not None:
                await rt.store.idem_complete(claimed, request_id, status, content_type, body,
                                             time.time())
            if spend and principal is not None and run:
                await rt.store.release_spend(principal.tenant or "", run, spend, time.time())
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


def _decision_fields(ctx: CallContext, rt: Runtime, verdict: Verdict,
                     approval_id: str | None) -> dict[str, Any]:
    spec, principal = ctx.spec, ctx.principal
    pointers = list(spec.pii_pointers) if spec else []
    if ctx.policy is not None:
        pointers += ctx.policy.redact
    status = verdict.error.status if verdict.error else (
        202 if verdict.action is Action.REQUIRE_APPROVAL else None)
    return {
        "principal": principal.as_audit() if principal else None,
        "run_id": ctx.run_id,
        "run": ctx.usage.as_input() if ctx.usage is not None else None,
        "tool": spec.name if spec else None,
        "action": str(verdict.action),
        "shadow": verdict.shadow,
        "stage": verdict.stage,
        "code": verdict.code,
        "message": verdict.error.message if verdict.error else None,
        "status": status,
        "reasons": list(verdict.reasons),
        "policy_revision": rt.engine.revision,
        "args": redact(ctx.args, pointers) if ctx.args is not None else None,
        "idempotency_key": ctx.idempotency_key,
        "approval_id": approval_id,
        "latency_ms": {"total": round((time.perf_counter() - ctx.call.started) * 1000, 3),
                       "policy": round(ctx.policy_ms, 3)},
    }


async def _queue(ctx: CallContext, rt: Runtime, verdict: Verdict, approval_id: str,
                 audit: CallAudit) -> Reply:
    spec, principal, policy = ctx.spec, ctx.principal, ctx.policy
    assert spec is not None and principal is not None and policy is not None
    assert ctx.args is not None
    now = time.time()
    ttl = policy.ttl_seconds or rt.settings.approval_ttl_seconds
    stored = _stored_call(ctx, rt)
    approval = Approval(
        id=approval_id, status=ApprovalStatus.PENDING, decision_id=ctx.call.request_id,
        tool=spec.name, args=ctx.args,
        call_hash=call_hash(spec.name, ctx.args, principal.sub, principal.tenant),
        principal=principal.as_audit(), reasons=verdict.reasons,
        approvals_required=policy.approvals_required, approver_roles=policy.approver_roles,
        created_at=now, expires_at=now + ttl, updated_at=now, call=stored,
        call_digest=stored.digest(), idempotency_key=ctx.idempotency_key,
        # Only a call that carries a key its upstream dedups on may be sent again after a
        # crash mid-send; the key is forwarded exactly when the tool uses one.
        resend_safe=ctx.idempotency_key is not None)
    try:
        await rt.store.create_approval(approval)
    except ApprovalKeyTaken:
        # The same key arrived twice at once and the other request queued first.
        held = await rt.store.find_approval(principal.tenant, spec.name,
                                            ctx.idempotency_key or "")
        if held is None or held.call_hash != approval.call_hash:
            exc: GatewayError = IdempotencyKeyReused("this Idempotency-Key was used for a "
                                                     "different call")
            audit.outcome(error=str(exc.code), status=exc.status)
            return error_reply(exc, ctx.call.request_id)
        audit.handed_over()
        return from_held(held, ctx.call.request_id)
    except GatewayError as exc:
        audit.outcome(error=str(exc.code), status=exc.status)
        return error_reply(exc, ctx.call.request_id)
    # Held, not executed: the one outcome record comes when (if) the call is executed.
    audit.handed_over()
    try:
        rt.approvals.record("queued", approval, expires_at=rfc3339(approval.expires_at))
    except GatewayError:
        log.critical("queued record for %s lost", approval_id)
    rt.approvals.notifier.notify("pending", approval)
    return from_held(approval, ctx.call.request_id)


def from_held(held: Approval, request_id: str) -> Reply:
    """The answer to a held call (or a retry of one), from its current state."""
    status = held.status_at(time.time())
    decision = str(Action.REQUIRE_APPROVAL)
    if status is ApprovalStatus.EXECUTED and held.result_status is not None:
        headers: CIMultiDict[str] = CIMultiDict({"Idempotent-Replayed": "true"})
        return Reply(held.result_status, held.result_body or b"", decision, headers,
                     held.result_content_type)
    refusal: GatewayError | None = None
    if status is ApprovalStatus.REJECTED:
        refusal = PolicyDenied("an approver rejected this call",
                               reasons=[f"rejected: {held.reason}"], approval_id=held.id,
                               fallback="route_to_human")
    elif status is ApprovalStatus.EXPIRED:
        refusal = PolicyDenied("nobody approved this call before it expired",
                               reasons=["approval_expired"], approval_id=held.id,
                               fallback="route_to_human")
    elif status is ApprovalStatus.FAILED:
        # Not sent for a reason of the gateway's own: answer as the call itself would be.
        failed: type[GatewayError] = {"killed": Killed, "budget_exceeded": BudgetExceeded}.get(
            held.error or "", UpstreamError)
        refusal = failed(f"the approved call failed: {held.reason}", approval_id=held.id)
    elif status is ApprovalStatus.OUTCOME_UNKNOWN:
        refusal = OutcomeUnknown("the approved call may or may not have run; a person must "
                                 "check", approval_id=held.id, fallback="route_to_human")
    if refusal is not None:
        return error_reply(refusal, request_id, decision)
    body = {"status": "pending_approval", "approval_id": held.id,
            "approval_status": str(status), "poll": f"/v1/approvals/{held.id}",
            "reasons": list(held.reasons), "expires_at": rfc3339(held.expires_at)}
    return Reply(202, orjson.dumps(body), decision)


async def _forward(ctx: CallContext, rt: Runtime, audit: CallAudit) -> Reply:
    spec = ctx.spec
    assert spec is not None
    call = ctx.call
    total_start = call.started
    try:
        resp = await rt.forwarder.send(
            _stored_call(ctx, rt), request_id=call.request_id, client_ip=call.source_ip,
            host=call.host, scheme=call.scheme, idempotency_key=ctx.idempotency_key,
            timeout_ms=spec.timeout_ms)
    except GatewayError as exc:
        rt.metrics.upstream.labels(spec.name, str(exc.code)).inc()
        audit.outcome(error=str(exc.code), status=exc.status, upstream_status=None,
                      latency_ms=_latency(total_start, ctx, None))
        reply = error_reply(exc, call.request_id, str(Action.ALLOW))
        await _settle(ctx, rt, reply.status, reply.content_type, reply.body)
        return reply
    output_valid = None
    if spec.output_validator is not None and 200 <= resp.status < 300:
        output_valid = _output_valid(spec.output_validator, resp.body)
        rt.metrics.output_schema.labels(spec.name, "pass" if output_valid else "fail").inc()
    m = rt.metrics
    m.upstream.labels(spec.name, f"{resp.status // 100}xx").inc()
    m.upstream_latency.labels(spec.name).observe(resp.latency_ms / 1000)
    m.overhead.labels(spec.name).observe(
        max(0.0, time.perf_counter() - total_start - resp.latency_ms / 1000))
    audit.outcome(status=resp.status, upstream_status=resp.status, output_valid=output_valid,
                  latency_ms=_latency(total_start, ctx, resp.latency_ms))
    content_type = resp.headers.pop("Content-Type", None)
    await _settle(ctx, rt, resp.status, content_type, resp.body)
    return Reply(resp.status, resp.body, str(Action.ALLOW), resp.headers, content_type)


def _output_valid(validator: Any, body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return bool(validator.is_valid(value))


def _latency(start: float, ctx: CallContext, upstream_ms: float | None) -> dict[str, Any]:
    return {"total": round((time.perf_counter() - start) * 1000, 3),
            "policy": round(ctx.policy_ms, 3),
            "upstream": None if upstream_ms is None else round(upstream_ms, 3)}
