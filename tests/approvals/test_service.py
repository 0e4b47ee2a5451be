"""The approval service on a real runtime: votes and rejections under the rules, each
audited before it commits, refusals audited too; an approved call is sent once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.act.handle import handle
from gateway.approvals.model import ApprovalStatus
from gateway.auth import Principal, principal_from_claims
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    GatewayError,
    NotFound,
    SelfApproval,
)
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, records, runtime, tool_call

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}
QUIET = {"sweep_interval_ms": 3_600_000, "wait_ms": 5000}  # no sweeps during a test


@pytest.fixture
async def quiet(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(tmp_path, dev_key, recorder[1], clock, approvals=QUIET) as rt:
        yield rt


def approver(sub: str, *roles: str, tenant: str = "acme") -> Principal:
    return principal_from_claims({"sub": sub, "tenant": tenant, "roles": list(roles),
                                  "scope": "toolgate:approve"})


async def held_call(rt: Runtime, token: str, key: str, path: str = "/billing/refunds",
                    body: dict[str, Any] | None = None) -> str:
    bundle = rt.bundles.current
    reply = await handle(tool_call(bundle, "POST", path, token=token, body=body or REFUND,
                                   headers={"Idempotency-Key": key}, request_id=f"req_{key}"),
                         bundle, rt)
    assert reply.status == 202, reply.body
    return str(orjson.loads(reply.body)["approval_id"])


async def status(rt: Runtime, approval_id: str) -> ApprovalStatus:
    approval = await rt.store.get_approval(approval_id)
    assert approval is not None
    return approval.status


def events(rt: Runtime, approval_id: str) -> list[str]:
    return [r.get("event") or r["kind"] for r in records(rt)
            if r.get("approval_id") == approval_id]


async def test_an_approved_call_is_sent_once_and_recorded(
        quiet: Runtime, agent_token: str, recorder: tuple[Recorder, str]) -> None:
    approval_id = await held_call(quiet, agent_token, "s-1")
    done = await quiet.approvals.approve(approval_id, approver("alice", "billing-approver"),
                                         "ok")
    assert done.status is ApprovalStatus.EXECUTED
    assert done.result_status == 201
    assert len(recorder[0].seen) == 1
    assert events(quiet, approval_id) == ["decision", "queued", "approval_vote", "approved",
                                          "executing", "outcome"]
    assert {r["policy_revision"] for r in records(quiet)
            if r.get("approval_id") == approval_id} == {quiet.bundles.current.revision}
    with pytest.raises(ApprovalNotPending):
        await quiet.approvals.approve(approval_id, approver("bob", "billing-approver"), None)
    assert len(recorder[0].seen) == 1


@pytest.mark.parametrize(("who", "error"), [
    (approver("svc-agent", "billing-approver"), SelfApproval),
    (approver("svc-agent", "billing-approver", tenant="globex"), SelfApproval),
    (approver("alice", "support"), ApproverRoleRequired),
])
async def test_refusals_change_nothing_and_are_audited(
        quiet: Runtime, agent_token: str, who: Principal, error: type[GatewayError]) -> None:
    approval_id = await held_call(quiet, agent_token, "s-2")
    for act in (quiet.approvals.approve(approval_id, who, None),
                quiet.approvals.reject(approval_id, who, "no")):
        with pytest.raises(error):
            await act
    assert await status(quiet, approval_id) is ApprovalStatus.PENDING
    refused = [r for r in records(quiet) if r.get("event") == "refused"]
    assert [r["code"] for r in refused] == [str(error.code)] * 2
    assert refused[0]["actor"]["sub"] == who.sub


async def test_two_approvers_for_two_person_calls(quiet: Runtime, agent_token: str,
                                                  recorder: tuple[Recorder, str]) -> None:
    approval_id = await held_call(quiet, agent_token, "s-3", "/echo/two-person",
                                  {"tenant_id": "acme", "amount": 5})
    first = await quiet.approvals.approve(approval_id, approver("alice", "finance"), None)
    assert first.status is ApprovalStatus.PENDING
    with pytest.raises(AlreadyApprovedByYou):
        await quiet.approvals.approve(approval_id, approver("alice", "finance"), None)
    second = await quiet.approvals.approve(approval_id, approver("bob", "finance"), None)
    assert second.status is ApprovalStatus.EXECUTED
    assert len(recorder[0].seen) == 1


async def test_a_rejection_reaches_the_agent(quiet: Runtime, agent_token: str) -> None:
    approval_id = await held_call(quiet, agent_token, "s-4")
    rejected = await quiet.approvals.reject(approval_id, approver("alice", "billing-approver"),
                                            "duplicate of RF-1")
    assert (rejected.status, rejected.reason) == (ApprovalStatus.REJECTED, "duplicate of RF-1")
    bundle = quiet.bundles.current
    retry = await handle(tool_call(bundle, "POST", "/billing/refunds", token=agent_token,
                                   body=REFUND, headers={"Idempotency-Key": "s-4"}), bundle,
                         quiet)
    assert orjson.loads(retry.body)["error"]["reasons"] == ["rejected: duplicate of RF-1"]


async def test_an_expired_call_cannot_be_decided(quiet: Runtime, agent_token: str,
                                                 clock: FakeClock) -> None:
    approval_id = await held_call(quiet, agent_token, "s-5")
    clock.advance(3601)  # the shipped policy holds refunds for an hour
    # Checked inside the transaction, before any sweep has stored `expired`.
    with pytest.raises(ApprovalExpired):
        await quiet.approvals.reject(approval_id, approver("alice", "billing-approver"), "x")
    assert await status(quiet, approval_id) is ApprovalStatus.PENDING
    with pytest.raises(ApprovalExpired):
        await quiet.approvals.approve(approval_id, approver("alice", "billing-approver"), None)
    assert await status(quiet, approval_id) is ApprovalStatus.EXPIRED
    with pytest.raises(NotFound):
        await quiet.approvals.approve("apr_nope", approver("alice"), None)
    with pytest.raises(NotFound):
        await quiet.approvals.reject("apr_nope", approver("alice"), "no")
