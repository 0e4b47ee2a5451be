"""The approval rules as a pure function, and the notification payload."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.approvals.notify import payload
from gateway.approvals.service import check_vote
from gateway.auth import principal_from_claims
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    GatewayError,
    SelfApproval,
)
from gateway.store.base import Approval, ApprovalStatus, StoredCall, Vote

NOW = 1_800_000_000.0


def held(**changes: Any) -> Approval:
    base: dict[str, Any] = {
        "id": "apr_1", "status": ApprovalStatus.PENDING, "decision_id": "req_1",
        "tool": "create_refund_request", "args": {"amount": 250, "customer_email": "a@b.c"},
        "call_hash": "h", "principal": {"sub": "agent-1", "agent": "bot", "tenant": "acme"},
        "reasons": ("over_limit: amount 250 USD",), "approvals_required": 1,
        "approver_roles": ("billing-approver",), "created_at": NOW - 10,
        "expires_at": NOW + 3600,
        "call": StoredCall("billing", "POST", "/v1/refunds", "", {}, b"{}")}
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


def test_same_sub_in_another_tenant_is_another_principal() -> None:
    check_vote(held(), who("agent-1", tenant="globex"), NOW)


def test_no_roles_asked_means_any_approver() -> None:
    check_vote(held(approver_roles=()), who("alice", roles=()), NOW)


def test_payload_leaves_arguments_out_by_default() -> None:
    body = payload("pending", held(), include_args=False)
    assert "args" not in body["toolgate"]
    assert "a@b.c" not in str(body)
    assert "create_refund_request" in body["text"]
    assert "toolgate approvals approve apr_1" in body["text"]
    assert payload("pending", held(), include_args=True)["toolgate"]["args"]["amount"] == 250


def test_expiry_is_checked_at_the_vote_not_later() -> None:
    approval = held(expires_at=time.time() - 1)
    with pytest.raises(ApprovalExpired):
        check_vote(approval, who("alice"), time.time())
