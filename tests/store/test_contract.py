"""What every state store must do, run against each (see conftest)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.core.errors import ApprovalNotPending, BudgetExceeded, SelfApproval
from gateway.state.budgets import Limits
from gateway.state.idempotency import ClaimState, Scope
from gateway.store.base import (
    Approval,
    ApprovalKeyTaken,
    ApprovalStatus,
    KillSwitch,
    StateStore,
    StoredCall,
)

NOW = time.time()


def approval(approval_id: str = "apr_1", key: str | None = "k1", **changes: Any) -> Approval:
    call = StoredCall("billing", "POST", "/v1/refunds", "a=1", {"Content-Type": "x"},
                      b'{"amount": 250}', "10.0.0.1", "gw", "http")
    base: dict[str, Any] = {
        "id": approval_id, "status": ApprovalStatus.PENDING, "decision_id": "req_1",
        "tool": "create_refund_request", "args": {"amount": 250}, "call_hash": "h",
        "principal": {"sub": "agent", "agent": "bot", "tenant": "acme"},
        "reasons": ("over_limit",), "approvals_required": 1, "approver_roles": ("r",),
        "created_at": NOW, "expires_at": NOW + 60, "updated_at": NOW, "call": call,
        "call_digest": call.digest(), "idempotency_key": key, "resend_safe": True}
    base.update(changes)
    return Approval(**base)


def nothing(_: Any) -> None:
    return None


async def test_approval_round_trip(store: StateStore) -> None:
    a = approval()
    await store.create_approval(a)
    got = await store.get_approval("apr_1")
    assert got is not None
    assert got.call == a.call
    assert got.call.digest() == a.call_digest
    assert (got.args, got.reasons, got.approver_roles, got.resend_safe) == (
        {"amount": 250}, ("over_limit",), ("r",), True)
    assert await store.find_approval("acme", "create_refund_request", "k1") == got
    assert await store.find_approval("globex", "create_refund_request", "k1") is None
    assert [x.id for x in await store.list_approvals(status="pending")] == ["apr_1"]
    assert await store.list_approvals(tenant="globex") == []
    with pytest.raises(ApprovalKeyTaken):
        await store.create_approval(approval("apr_2"))
    await store.create_approval(approval("apr_3", key=None))
    await store.create_approval(approval("apr_4", key=None))


async def test_a_refused_vote_changes_nothing(store: StateStore) -> None:
    await store.create_approval(approval())

    def refuse(_: Approval) -> None:
        raise SelfApproval("no")

    with pytest.raises(SelfApproval):
        await store.vote("apr_1", {"sub": "agent"}, None, NOW, check=refuse, record=nothing)
    with pytest.raises(RuntimeError):
        await store.vote("apr_1", {"sub": "alice"}, None, NOW, check=nothing,
                         record=lambda _: (_ for _ in ()).throw(RuntimeError("audit down")))
    got = await store.get_approval("apr_1")
    assert got is not None
    assert (got.status, got.votes) == (ApprovalStatus.PENDING, ())
    with pytest.raises(KeyError):
        await store.vote("apr_nope", {"sub": "alice"}, None, NOW, check=nothing,
                         record=nothing)


async def test_concurrent_votes_approve_once(store: StateStore) -> None:
    await store.create_approval(approval())
    recorded: list[str] = []

    def pending_only(current: Approval) -> None:
        if current.status is not ApprovalStatus.PENDING:
            raise ApprovalNotPending("no")

    async def vote(i: int) -> str:
        try:
            after = await store.vote("apr_1", {"sub": f"approver-{i}"}, None, NOW,
                                     check=pending_only,
                                     record=lambda a: recorded.append(str(a.status)))
        except ApprovalNotPending:
            return "refused"
        return str(after.status)

    results = await asyncio.gather(*(vote(i) for i in range(20)))
    assert results.count("approved") == 1
    assert results.count("refused") == 19
    assert recorded == ["approved"]
    got = await store.get_approval("apr_1")
    assert got is not None
    assert len(got.votes) == 1


async def test_transitions_are_conditional(store: StateStore) -> None:
    await store.create_approval(approval())
    pending = frozenset({ApprovalStatus.PENDING})
    approved = frozenset({ApprovalStatus.APPROVED})
    assert await store.transition("apr_1", approved, ApprovalStatus.EXECUTING, NOW) is None
    moved = await store.transition("apr_1", pending, ApprovalStatus.APPROVED, NOW)
    assert moved is not None
    assert moved.status is ApprovalStatus.APPROVED
    results = await asyncio.gather(*(store.transition(
        "apr_1", approved, ApprovalStatus.EXECUTING, NOW, attempts=1) for _ in range(10)))
    assert sum(r is not None for r in results) == 1
    done = await store.transition("apr_1", frozenset({ApprovalStatus.EXECUTING}),
                                  ApprovalStatus.EXECUTED, NOW, result_status=201,
                                  result_body=b"{}", result_content_type="application/json")
    assert done is not None
    assert (done.result_status, done.result_body, done.attempts) == (201, b"{}", 1)
    assert [a.id for a in await store.in_states(frozenset({ApprovalStatus.EXECUTED}))] == [
        "apr_1"]


async def test_expiry(store: StateStore) -> None:
    await store.create_approval(approval("apr_old", key="a", expires_at=NOW - 1))
    await store.create_approval(approval("apr_new", key="b"))
    seen: list[str] = []
    expired = await store.expire_due(NOW, lambda a: seen.append(a.id))
    assert [a.id for a in expired] == ["apr_old"] == seen
    assert expired[0].status is ApprovalStatus.EXPIRED
    assert await store.expire_due(NOW, nothing) == []


SCOPE = Scope("acme", "create_refund_request", "key-1")


async def test_idempotency_claims(store: StateStore) -> None:
    first = await store.idem_claim(SCOPE, "fp", "req_a", NOW, 30)
    assert first.claimed
    assert first.record.state is ClaimState.IN_FLIGHT
    second = await store.idem_claim(SCOPE, "fp", "req_b", NOW, 30)
    assert not second.claimed
    assert second.record.request_id == "req_a"
    await store.idem_complete(SCOPE, "req_b", 500, None, b"not mine", NOW)  # not the owner
    await store.idem_complete(SCOPE, "req_a", 201, "application/json", b'{"ok":1}', NOW)
    done = await store.idem_get(SCOPE)
    assert done is not None
    assert (done.state, done.status, done.body, done.content_type) == (
        ClaimState.DONE, 201, b'{"ok":1}', "application/json")
    again = await store.idem_claim(SCOPE, "fp", "req_c", NOW + 3600, 30)
    assert not again.claimed, "a completed key is never claimed again"


async def test_a_crashed_claim_is_taken_over_after_its_lease(store: StateStore) -> None:
    assert (await store.idem_claim(SCOPE, "fp", "req_dead", NOW, 5)).claimed
    assert not (await store.idem_claim(SCOPE, "fp", "req_b", NOW + 1, 5)).claimed
    assert not (await store.idem_claim(SCOPE, "other-fp", "req_c", NOW + 10, 5)).claimed
    taken = await store.idem_claim(SCOPE, "fp", "req_d", NOW + 10, 5)
    assert taken.claimed
    assert taken.record.request_id == "req_d"


async def test_release_and_purge(store: StateStore) -> None:
    await store.idem_claim(SCOPE, "fp", "req_a", NOW, 30)
    await store.idem_release(SCOPE, "req_other")
    assert await store.idem_get(SCOPE) is not None
    await store.idem_release(SCOPE, "req_a")
    assert await store.idem_get(SCOPE) is None
    other = Scope("acme", "t", "k2")
    await store.idem_claim(other, "fp", "req_x", NOW, 30)
    await store.idem_complete(other, "req_x", 200, None, b"", NOW)
    assert await store.idem_purge(NOW - 1) == 0
    assert await store.idem_purge(NOW + 1) == 1
    assert await store.idem_get(other) is None


async def test_concurrent_claims_have_one_winner(store: StateStore) -> None:
    claims = await asyncio.gather(*(store.idem_claim(SCOPE, "fp", f"req_{i}", NOW, 30)
                                    for i in range(50)))
    assert sum(c.claimed for c in claims) == 1


LIMITS = Limits(max_tool_calls=5, max_calls_per_tool={"default": 3}, max_spend={"amount": 100})


async def test_budgets(store: StateStore) -> None:
    usage = await store.reserve("acme", "run-1", "refund", {"amount": 60}, LIMITS, NOW)
    assert (usage.tool_calls, usage.per_tool, usage.spent) == (1, {"refund": 1},
                                                               {"amount": 60.0})
    with pytest.raises(BudgetExceeded):
        await store.reserve("acme", "run-1", "refund", {"amount": 41}, LIMITS, NOW)
    assert (await store.usage("acme", "run-1")).spent == {"amount": 60.0}
    await store.reserve("acme", "run-1", "refund", {"amount": 40}, LIMITS, NOW)
    await store.release_spend("acme", "run-1", {"amount": 40}, NOW)
    usage = await store.usage("acme", "run-1")
    assert (usage.tool_calls, usage.spent) == (2, {"amount": 60.0})
    await store.reserve("acme", "run-1", "refund", {}, LIMITS, NOW)
    with pytest.raises(BudgetExceeded) as info:
        await store.reserve("acme", "run-1", "refund", {}, LIMITS, NOW)
    assert info.value.extra["budget"] == "max_calls_per_tool"
    assert (await store.usage("acme", "run-2")).tool_calls == 0


async def test_concurrent_reservations_never_overshoot(store: StateStore) -> None:
    limits = Limits(max_spend={"amount": 100})

    async def try_spend() -> bool:
        try:
            await store.reserve("acme", "run-c", "refund", {"amount": 7}, limits, NOW)
        except BudgetExceeded:
            return False
        return True

    results = await asyncio.gather(*(try_spend() for _ in range(40)))
    assert sum(results) == 14  # 14 x 7 = 98; a 15th would be 105
    assert (await store.usage("acme", "run-c")).spent == {"amount": 98.0}


async def test_kill_switches(store: StateStore) -> None:
    seen: list[KillSwitch] = []
    await store.kill_set("tool:create_refund_request", "incident 42", {"sub": "ops"}, NOW,
                         seen.append)
    await store.kill_set("global", "freeze", {"sub": "ops"}, NOW, seen.append)
    await store.kill_set("global", "freeze, again", {"sub": "ops2"}, NOW, seen.append)
    switches = await store.kill_list()
    assert [(k.scope, k.reason) for k in switches] == [
        ("global", "freeze, again"), ("tool:create_refund_request", "incident 42")]
    cleared = await store.kill_clear("global", NOW, seen.append)
    assert cleared is not None
    assert cleared.reason == "freeze, again"
    assert await store.kill_clear("global", NOW, seen.append) is None
    assert [k.scope for k in await store.kill_list()] == ["tool:create_refund_request"]
    assert len(seen) == 4


async def test_only_calls_of_silent_instances_are_abandoned(store: StateStore) -> None:
    await store.create_approval(approval("apr_live", key="l"))
    await store.create_approval(approval("apr_dead", key="d"))
    for approval_id, owner in (("apr_live", "gw-live"), ("apr_dead", "gw-dead")):
        await store.transition(approval_id, frozenset({ApprovalStatus.PENDING}),
                               ApprovalStatus.EXECUTING, NOW, owner=owner)
    await store.heartbeat("gw-dead", NOW - 60)
    await store.heartbeat("gw-live", NOW)
    assert [a.id for a in await store.abandoned(NOW, 10)] == ["apr_dead"]
    executing = frozenset({ApprovalStatus.EXECUTING})
    # Taking a call over is conditional on its owner: the second taker loses.
    first = await store.transition("apr_dead", executing, ApprovalStatus.EXECUTING, NOW,
                                   owner_is=("gw-dead",), owner="gw-a")
    second = await store.transition("apr_dead", executing, ApprovalStatus.EXECUTING, NOW,
                                    owner_is=("gw-dead",), owner="gw-b")
    assert first is not None
    assert first.owner == "gw-a"
    assert second is None
    # The old owner can no longer finish it.
    assert await store.transition("apr_dead", executing, ApprovalStatus.EXECUTED, NOW,
                                  owner_is=("gw-dead",), result_status=200) is None
