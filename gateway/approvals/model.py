"""The held call and its state machine (DESIGN §5), as the domain owns them.

pending → approved → executing → executed | failed | not_sent | outcome_unknown
pending → rejected | expired

The three ways an approved call can end without an answer say what the upstream may have
done: `not_sent` — the gateway did not send it (a kill switch, the run's budget, a failed
integrity check, a tool or upstream no longer configured, an upstream that could not be
connected to), so it did not run; `failed` — it was sent and no answer came back (a
timeout, a connection broken mid-call), so it may have run; `outcome_unknown` — the gateway
stopped while sending it, so nobody knows. `error` holds the code of the first two: for
`not_sent` the refusal's own, which its agent is answered with (`gateway.act.answers`).

An `Approval` binds a decision to the exact call: the canonical arguments and who asked
(`call_hash`), and the exact outbound request (`plan`, with `call_digest` over its bytes).
It keeps the arguments whole — an approver is shown everything that will be sent — and,
in `redact`, the pointers every copy of them that leaves for elsewhere must be redacted at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gateway.core.canonical import canonical_json, rfc3339
from gateway.core.outbound import OutboundPlan


class ApprovalStatus(StrEnum):
    """Where a held call is (`FINAL`: where it stays)."""

    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"          # sent, no answer: it may have run
    NOT_SENT = "not_sent"      # the gateway did not send it: it did not run
    OUTCOME_UNKNOWN = "outcome_unknown"
    REJECTED = "rejected"
    EXPIRED = "expired"


FINAL = frozenset({ApprovalStatus.EXECUTED, ApprovalStatus.FAILED, ApprovalStatus.NOT_SENT,
                   ApprovalStatus.OUTCOME_UNKNOWN, ApprovalStatus.REJECTED,
                   ApprovalStatus.EXPIRED})


def call_hash(tool: str, args: Mapping[str, Any], sub: str, tenant: str | None) -> str:
    """What an approval binds to: the tool, the canonical arguments, who asked, for whom."""
    return hashlib.sha256(canonical_json(
        {"tool": tool, "args": args, "sub": sub, "tenant": tenant})).hexdigest()


@dataclass(frozen=True)
class Vote:
    approver: Mapping[str, Any]    # sub, agent, tenant, roles
    comment: str | None
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"approver": dict(self.approver), "comment": self.comment,
                "at": rfc3339(self.created_at)}


@dataclass(frozen=True)
class Approval:
    id: str
    status: ApprovalStatus
    decision_id: str
    tool: str
    args: Mapping[str, Any]
    call_hash: str
    principal: Mapping[str, Any]   # sub, agent, tenant
    reasons: tuple[str, ...]
    approvals_required: int
    approver_roles: tuple[str, ...]
    created_at: float
    expires_at: float
    plan: OutboundPlan
    call_digest: str = ""
    idempotency_key: str | None = None
    resend_safe: bool = False      # the upstream dedups by the forwarded Idempotency-Key
    run_id: str | None = None      # the run whose budget the call counts against
    revision: str = ""             # the bundle the call was decided with
    spend: Mapping[str, float] = field(default_factory=dict)
    # The spec's x-pii pointers and the decision's `redact` ones, fixed when it was held
    # ("" — the whole arguments — for a call held before they were kept).
    redact: tuple[str, ...] = ()
    updated_at: float = 0.0
    reason: str | None = None      # why rejected / failed / how resolved
    result_status: int | None = None
    result_content_type: str | None = None
    result_body: bytes | None = None
    attempts: int = 0
    owner: str | None = None       # the gateway instance sending it (while executing)
    error: str | None = None       # why it failed, or was not sent (shown as `error_code`)
    votes: tuple[Vote, ...] = ()

    @property
    def sub(self) -> str:
        return str(self.principal["sub"])

    @property
    def tenant(self) -> str | None:
        tenant = self.principal.get("tenant")
        return None if tenant is None else str(tenant)

    def status_at(self, now: float) -> ApprovalStatus:
        """The status, counting a pending call past its expiry as expired before the
        sweeper has stored that."""
        if self.status is ApprovalStatus.PENDING and now >= self.expires_at:
            return ApprovalStatus.EXPIRED
        return self.status

    def result(self) -> dict[str, Any] | None:
        if self.result_status is None:
            return None
        body: Any = None
        if self.result_body is not None:
            try:
                body = orjson.loads(self.result_body)
            except orjson.JSONDecodeError:
                body = self.result_body.decode("utf-8", "replace")
        return {"status": self.result_status, "content_type": self.result_content_type,
                "body": body}

    def public(self, credential_header: str | None = None) -> dict[str, Any]:
        """The approval as the APIs show it: the exact call that would be sent included."""
        return {
            "id": self.id, "status": str(self.status), "tool": self.tool,
            "args": self.args, "call": self.plan.view(credential_header),
            "reasons": list(self.reasons), "principal": dict(self.principal),
            "decision_id": self.decision_id, "call_hash": self.call_hash,
            "approvals_required": self.approvals_required,
            "approver_roles": list(self.approver_roles),
            "approvals": [v.public() for v in self.votes],
            "created_at": rfc3339(self.created_at), "expires_at": rfc3339(self.expires_at),
            "updated_at": rfc3339(self.updated_at or self.created_at),
            "idempotency_key": self.idempotency_key, "run_id": self.run_id,
            "reason": self.reason, "error_code": self.error,
            "result": self.result(),
        }
