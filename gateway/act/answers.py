"""What an entrance sends back (`Reply`), and the answers that need no upstream: an error,
a retry of a held call, a replay of a completed one, a shadow report."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from multidict import CIMultiDict

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.core.canonical import rfc3339
from gateway.core.decision import Action, Verdict
from gateway.core.errors import (
    BudgetExceeded,
    GatewayError,
    InternalError,
    Killed,
    OutcomeUnknown,
    PolicyDenied,
    ToolNotAllowed,
    UpstreamError,
)
from gateway.state.idempotency import KeyState

JSON = "application/json"
# The answer to a call that was approved and not sent, by the code it was stopped with
# (`gateway.approvals.executor`); any other (a call held by an earlier version) is a 500.
NOT_SENT_ANSWERS: dict[str, type[GatewayError]] = {
    "killed": Killed, "budget_exceeded": BudgetExceeded, "upstream_error": UpstreamError,
    "tool_not_allowed": ToolNotAllowed, "internal_error": InternalError}


@dataclass
class Reply:
    """What the entrance renders; `decision` becomes `X-Toolgate-Decision`."""

    status: int
    body: bytes
    decision: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    content_type: str | None = JSON


def error_reply(exc: GatewayError, request_id: str, decision: str = "deny") -> Reply:
    return Reply(exc.status, orjson.dumps(exc.body(request_id)), decision,
                 CIMultiDict(exc.headers))


def replay(state: KeyState) -> Reply:
    """A completed call's stored answer, exactly, marked as a replay."""
    headers: CIMultiDict[str] = CIMultiDict({"Idempotent-Replayed": "true"})
    return Reply(state.answer_status or 500, state.body or b"", str(Action.ALLOW), headers,
                 state.content_type)


def shadow(verdict: Verdict) -> Reply:
    """A shadow tool's report of what would have happened; nothing was done."""
    return Reply(200, orjson.dumps({"status": "shadow", "action": str(verdict.action),
                                    "reasons": list(verdict.reasons)}), verdict.header)


def from_held(held: Approval, request_id: str, now: float) -> Reply:
    """The answer to a held call (or a retry of one), from its current state."""
    status = held.status_at(now)
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
        # Sent, and no answer came back: it may have run.
        refusal = UpstreamError(f"the approved call failed: {held.reason}",
                                approval_id=held.id, approval_status=str(status))
    elif status is ApprovalStatus.NOT_SENT:
        # The gateway did not send it, so it did not run: answered with the refusal's own
        # code, as the call itself would have been, and `sent: false` to say so.
        unsent = NOT_SENT_ANSWERS.get(held.error or "", InternalError)
        why = (held.reason or "").removeprefix("not sent: ")
        refusal = unsent(f"the approved call was not sent: {why}", approval_id=held.id,
                         approval_status=str(status), sent=False, fallback="route_to_human")
    elif status is ApprovalStatus.OUTCOME_UNKNOWN:
        refusal = OutcomeUnknown("the approved call may or may not have run; a person must "
                                 "check", approval_id=held.id, fallback="route_to_human")
    if refusal is not None:
        return error_reply(refusal, request_id, decision)
    body = {"status": "pending_approval", "approval_id": held.id,
            "approval_status": str(status), "poll": f"/v1/approvals/{held.id}",
            "reasons": list(held.reasons), "expires_at": rfc3339(held.expires_at)}
    return Reply(202, orjson.dumps(body), decision)
