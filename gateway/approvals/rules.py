"""The approval rules (DESIGN §5), pure, each in one place.

Checked inside the store transaction that records a vote or a rejection, so approvers who
act at the same moment see one consistent state:
- the call is still pending, and not expired;
- the approver is not the requester: the same `sub` never decides its own call, whatever
  the tenant of either token (an OIDC `sub` is unique per issuer; a tenant claim is not an
  identity, so another tenant's token with the same `sub` is the same person);
- if the policy named `approver_roles`, the approver holds one of them;
- each approver counts once.
"""

from __future__ import annotations

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.auth import Principal
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    SelfApproval,
)


def is_requester(approval: Approval, principal: Principal) -> bool:
    """SECURITY: the one self-approval rule — the `sub` alone, never (`sub`, tenant)."""
    return principal.sub == approval.sub


def check_decision(approval: Approval, approver: Principal, now: float, verb: str) -> None:
    """Refuse an approver's decision (`verb`: approve or reject) the rules do not allow."""
    if approval.status is not ApprovalStatus.PENDING:
        raise ApprovalNotPending(f"approval {approval.id} is {approval.status}, not pending",
                                 approval_status=str(approval.status))
    if now >= approval.expires_at:
        raise ApprovalExpired(f"approval {approval.id} expired; the call will not run")
    # SECURITY: the principal that asked can never decide its own call, whatever roles
    # its token carries.
    if is_requester(approval, approver):
        raise SelfApproval(f"an approver cannot {verb} a call made by their own principal")
    if approval.approver_roles and not set(approval.approver_roles) & set(approver.roles):
        raise ApproverRoleRequired(
            f"only an approver with one of the roles {', '.join(approval.approver_roles)} "
            f"may {verb} this call",
            approver_roles=list(approval.approver_roles))


def check_vote(approval: Approval, approver: Principal, now: float) -> None:
    """Refuse a vote the rules do not allow; pure, so it runs inside the transaction."""
    check_decision(approval, approver, now, "approve")
    if any(v.approver.get("sub") == approver.sub for v in approval.votes):
        raise AlreadyApprovedByYou("you already approved this call; it needs "
                                   f"{approval.approvals_required} distinct approvers")


def may_read(approval: Approval, principal: Principal, approver_scope: str) -> bool:
    """Who may read a held call on the agent port: approvers, and the principal that made
    it (same `sub` and tenant — reading is narrower than deciding)."""
    return approver_scope in principal.scopes or (
        principal.sub == approval.sub and principal.tenant == approval.tenant)
