"""The approval rules, pure: one vote rule, one self-approval rule (the `sub`, whatever the
tenant), roles, expiry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.approvals.model import Approval, ApprovalStatus, Vote
from gateway.approvals.rules import check_decision, check_vote, is_requester, may_read
from gateway.auth import principal_from_claims
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    GatewayError,
    SelfApproval,
)
from gateway.core.outbound import OutboundPlan

NOW = 1_800_000_000.0


def held(**changes: Any) -> Approval:
    base: dict[str, Any] = {
        "id": "apr_1", "status": ApprovalStatus.PENDING, "decision_id": "req_1",
        "tool": "create_refund_request", "args": {"amount": 250, "customer_email": "a@b.c"},
        "call_hash": "h", "principal": {"sub": "agent-1", "agent": "bot", "tenant": "acme"},
        "reasons": ("over_limit: amount 250 USD",), "approvals_required": 1,
        "approver_roles": ("billing-approver",), "created_at": NOW - 10,
        "expires_at": NOW + 3600,
        "plan": OutboundPlan("billing", "POST", "/v1/refunds", "", {}, b"{}")}
    base.update(changes)
    return Approval(**base)


def who(sub: str, tenant: str = "acme", roles: tuple[str, ...] = ("billing-approver",)) -> Any:
    return principal_from_claims({"sub": sub, "tenant": tenant, "roles": list(roles)})


def test_a_valid_vote_passes() -> None:
    check_vote(held(), who("alice"), NOW)


@pytest.mark.parametrize(("approval", "approver", "error"), [
    (held(status=ApprovalStatus.REJECTED), who("alice"), ApprovalNotPending),
    (held(status=ApprovalStatus.EXECUTED), who("alice"), ApprovalNotPending),
    (held(expires_at=NOW), who("alice"), ApprovalExpired),
    (held(), who("agent-1"), SelfApproval),
    (held(), who("alice", roles=("support",)), ApproverRoleRequired),
    (held(), who("alice", roles=()), ApproverRoleRequired),
    (held(votes=(Vote({"sub": "alice"}, None, NOW),), approvals_required=2), who("alice"),
     AlreadyApprovedByYou),
])
def test_refusals(approval: Approval, approver: Any, error: type[GatewayError]) -> None:
    with pytest.raises(error):
        check_vote(approval, approver, NOW)


@pytest.mark.parametrize("tenant", ["acme", "globex", None])
def test_the_requester_never_decides_its_own_call_whatever_the_tenant(
        tenant: str | None) -> None:
    """An OIDC `sub` is one identity; a token for another tenant (or none) is still the
    requester. Before this rule compared (sub, tenant), another tenant's token approved."""
    me = principal_from_claims({"sub": "agent-1", "roles": ["billing-approver"],
                                **({"tenant": tenant} if tenant else {})})
    assert is_requester(held(), me)
    with pytest.raises(SelfApproval):
        check_vote(held(), me, NOW)
    with pytest.raises(SelfApproval):
        check_decision(held(), me, NOW, "reject")


def test_reading_a_held_call_needs_the_same_principal_or_the_approver_scope() -> None:
    assert may_read(held(), who("agent-1"), "toolgate:approve")
    assert not may_read(held(), who("agent-1", tenant="globex"), "toolgate:approve")
    assert not may_read(held(), who("bob"), "toolgate:approve")
    approver = principal_from_claims({"sub": "bob", "scope": "toolgate:approve"})
    assert may_read(held(), approver, "toolgate:approve")


def test_no_roles_asked_means_any_approver() -> None:
    check_vote(held(approver_roles=()), who("alice", roles=()), NOW)


def test_expiry_is_checked_at_the_vote_not_later() -> None:
    approval = held(expires_at=time.time() - 1)
    with pytest.raises(ApprovalExpired):
        check_vote(approval, who("alice"), time.time())
