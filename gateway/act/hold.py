"""The `hold` act: store the exact call for approval and answer 202.

One store transaction claims the idempotency key as held by this call (the same row a
forwarded call would take), stores the held call, and writes the decision record before it
commits (write-ahead): if the record cannot be written, nothing is held; if the key was
taken meanwhile by another request, nothing is held and the call is answered from what the
key holds instead — so a key is executed once or held once, never both.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from gateway.act.answers import Reply, error_reply, from_held
from gateway.approvals.model import Approval, ApprovalStatus, call_hash
from gateway.audit import records
from gateway.audit.call import CallAudit
from gateway.core.canonical import rfc3339
from gateway.core.context import CallContext
from gateway.core.decision import Verdict
from gateway.core.errors import AuditUnavailable, GatewayError, IdempotencyInFlight
from gateway.core.stage import Stage
from gateway.state.idempotency import judge

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("toolgate")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def held_call(ctx: CallContext, rt: Runtime, verdict: Verdict) -> Approval:
    """The approval record of a call the policy holds: bound to its exact plan."""
    call, principal, policy = ctx.call, ctx.principal, ctx.decision
    assert policy is not None  # a hold verdict comes from the policy
    now = rt.clock.time()
    ttl = policy.ttl_seconds or rt.settings.approval_ttl_seconds
    return Approval(
        id=new_id("apr"), status=ApprovalStatus.PENDING, decision_id=call.facts.request_id,
        tool=call.spec.name, args=dict(call.args),
        call_hash=call_hash(call.spec.name, call.args, principal.sub, principal.tenant),
        principal=principal.as_audit(), reasons=verdict.reasons,
        approvals_required=policy.approvals_required, approver_roles=policy.approver_roles,
        created_at=now, expires_at=now + ttl, updated_at=now, plan=ctx.plan,
        call_digest=ctx.plan.digest(), idempotency_key=ctx.idempotency_key,
        # Only a call that carries a key its upstream dedups on may be sent again after a
        # crash mid-send; the key is forwarded exactly when the tool uses one.
        resend_safe=ctx.idempotency_key is not None, run_id=ctx.run_id,
        revision=(policy.revision or ctx.bundle.revision),
        spend=ctx.spend or {},
        # What no copy of the arguments outside the store may show (a notification's).
        redact=(*call.spec.pii_pointers, *policy.redact))


async def hold(ctx: CallContext, rt: Runtime, verdict: Verdict,
               audit: CallAudit) -> Reply | Verdict:
    """Hold the call; a `Reply`, or — when the key turned out to be taken, or the store
    failed before anything was decided — the verdict to carry out instead."""
    approval = held_call(ctx, rt, verdict)
    record = records.decision(verdict, revision=ctx.bundle.revision, spec=ctx.call.spec,
                              ctx=ctx, approval_id=approval.id, redactor=rt.redactor,
                              elapsed_s=rt.clock.monotonic() - ctx.call.facts.started)
    request_id = ctx.call.facts.request_id
    try:
        taken = await rt.store.commit_hold(approval, ctx.claim,
                                           record=lambda _: audit.decision(record))
    except AuditUnavailable as exc:
        return error_reply(exc, request_id)  # no record, nothing held
    except GatewayError as exc:
        if not audit.decision_written:
            ctx.stage = Stage.COMMIT
            return ctx.verdict(exc)
        # Decided and recorded, then the store failed: the outcome says nothing was held.
        audit.outcome(records.outcome(error=str(exc.code), status=exc.status))
        return error_reply(exc, request_id)
    if taken is not None:
        assert ctx.claim is not None  # only a claim can find its key taken
        ctx.stage = Stage.COMMIT
        try:
            ctx.answered = judge(taken, ctx.claim, rt.clock.time())
            if ctx.answered is None:  # the store takes over a lapsed claim itself
                raise IdempotencyInFlight("the Idempotency-Key is being taken over; retry",
                                          retry_after_s=1)
        except GatewayError as exc:
            return ctx.verdict(exc)
        return ctx.verdict()
    # Held, not executed: the one outcome record comes when (if) the call is executed.
    try:
        rt.audit.write("approval", records.approval("queued", approval,
                                                     expires_at=rfc3339(approval.expires_at)))
    except GatewayError:
        log.critical("queued record for %s lost", approval.id)
    rt.approvals.notifier.notify("pending", approval)
    return from_held(approval, request_id, rt.clock.time())
