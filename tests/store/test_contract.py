"""What every state store must do, run against each (see conftest)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.core.errors import ApprovalNotPending, BudgetExceeded, SelfApproval
from gateway.core.outbound import OutboundPlan
from gateway.state.budgets import Limits, Reservation
from gateway.state.idempotency import Answer, KeyClaim, KeyStatus, Scope
from gateway.state.killswitch import KillSwitch
from gateway.store.base import StateStore

NOW = time.time()
SCOPE = Scope("acme", "create_refund_request", "key-1")


def approval(approval_id: str = "apr_1", key: str | None = "k1", **changes: Any) -> Approval:
    plan = OutboundPlan("billing", "POST", "/v1/refunds", "a=1",
                        {"Content-Type": "application/json", "X-Request-Id": "req_1"},
                        b'{"amount": 250}')
    base: dict[str, Any] = {
        "id": approval_id, "status": ApprovalStatus.PENDING, "decision_id": "req_1",
        "tool": "create_refund_request", "args": {"amount": 250}, "call_hash": "h",
        "principal": {"sub": "agent", "agent": "bot", "tenant": "acme"},
        "reasons": ("over_limit",), "approvals_required": 1, "approver_roles": ("r",),
        "created_at": NOW, "expires_at": NOW + 60, "updated_at": NOW, "plan": plan,
        "call_digest": plan.digest(), "idempotency_key": key, "resend_safe": True,
        "run_id": "run-1", "spend": {"amount": 250.0}}
    base.update(changes)
    return Approval(**base)


def nothing(_: Any) -> None:
    return None


def claim(request_id: str, fingerprint: str = "fp", lease_until: float = NOW + 30,
          scope: Scope = SCOPE) -> KeyClaim:
    return KeyClaim(scope, fingerprint, request_id, lease_until)


async def hold(store: StateStore, a: Approval) -> None:
    key = None if a.idempotency_key is None else claim(
        a.decision_id, scope=Scope("acme", a.tool, a.idempotency_key))
    assert await store.commit_hold(a, key, nothing) is None


async def test_approval_round_trip(store: StateStore) -> None:
    a = approval()
    recorded: list[str] = []
    assert await store.commit_hold(a, claim("req_1", scope=Scope("acme", a.tool, "k1")),
                                   lambda x: recorded.append(x.id)) is None
    assert recorded == ["apr_1"]
    got = await store.get_approval("apr_1")
    assert got is not None
    assert got.plan == a.plan
    assert got.plan.digest() == a.call_digest
    assert (got.args, got.reasons, got.approver_roles, got.resend_safe, got.run_id,
            got.spend) == ({"amount": 250}, ("over_limit",), ("r",), True, "run-1",
                           {"amount": 250.0})
    state = await store.key_state(Scope("acme", a.tool, "k1"))
    assert state is not None
    assert (state.status, state.approval) == (KeyStatus.HELD, got)
    assert await store.key_state(Scope("globex", a.tool, "k1")) is None
    assert [x.id for x in await store.list_approvals(status="pending")] == ["apr_1"]
    assert await store.list_approvals(tenant="globex") == []
    await hold(store, approval("apr_3", key=None))
    await hold(store, approval("apr_4", key=None))


async def test_a_failed_record_holds_nothing(store: StateStore) -> None:
    def fail(_: Approval) -> None:
        raise RuntimeError("audit down")

    with pytest.raises(RuntimeError):
        await store.commit_hold(approval(), claim("req_1", scope=Scope("acme",
                                "create_refund_request", "k1")), fail)
    assert await store.get_approval("apr_1") is None
    assert await store.key_state(Scope("acme", "create_refund_request", "k1")) is None


async def test_a_refused_vote_changes_nothing(store: StateStore) -> None:
    await hold(store, approval())

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
    await hold(store, approval())
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
    await hold(store, approval())
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
    await hold(store, approval("apr_old", key="a", expires_at=NOW - 1))
    await hold(store, approval("apr_new", key="b"))
    seen: list[str] = []
    expired = await store.expire_due(NOW, lambda a: seen.append(a.id))
    assert [a.id for a in expired] == ["apr_old"] == seen
    assert expired[0].status is ApprovalStatus.EXPIRED
    assert await store.expire_due(NOW, nothing) == []


async def test_a_key_is_claimed_once(store: StateStore) -> None:
    assert await store.commit_forward(claim("req_a"), None, NOW) is None
    taken = await store.commit_forward(claim("req_b"), None, NOW)
    assert taken is not None
    assert (taken.status, taken.request_id) == (KeyStatus.IN_FLIGHT, "req_a")
    # Only the request that holds the key stores its answer.
    await store.settle(claim("req_b"), Answer(500, None, b"not mine"), NOW)
    await store.settle(claim("req_a"), Answer(201, "application/json", b'{"ok":1}'),
                       NOW)
    done = await store.key_state(SCOPE)
    assert done is not None
    assert (done.status, done.answer_status, done.body, done.content_type) == (
        KeyStatus.DONE, 201, b'{"ok":1}', "application/json")
    again = await store.commit_forward(claim("req_c", lease_until=NOW + 3600), None,
                                       NOW + 3600)
    assert again is not None, "a completed key is never claimed again"


async def test_a_crashed_claim_is_taken_over_after_its_lease(store: StateStore) -> None:
    assert await store.commit_forward(claim("req_dead", lease_until=NOW + 5), None, NOW) is None
    assert await store.commit_forward(claim("req_b"), None, NOW + 1) is not None
    assert await store.commit_forward(claim("req_c", "other-fp"), None, NOW + 10) is not None
    assert await store.commit_forward(claim("req_d", lease_until=NOW + 20), None,
                                      NOW + 10) is None
    state = await store.key_state(SCOPE)
    assert state is not None
    assert state.request_id == "req_d"


async def test_undo_and_purge(store: StateStore) -> None:
    await store.commit_forward(claim("req_a"), None, NOW)
    await store.undo_forward(claim("req_other"), None, NOW)
    assert await store.key_state(SCOPE) is not None
    await store.undo_forward(claim("req_a"), None, NOW)
    assert await store.key_state(SCOPE) is None
    other = Scope("acme", "t", "k2")
    await store.commit_forward(claim("req_x", scope=other), None, NOW)
    await store.settle(claim("req_x", scope=other), Answer(200, None, b""), NOW)
    assert await store.purge_keys(NOW - 1) == 0
    assert await store.purge_keys(NOW + 1) == 1
    assert await store.key_state(other) is None


async def test_keys_of_decided_held_calls_are_purged_with_them(store: StateStore) -> None:
    await hold(store, approval("apr_p", key="kp"))
    scope = Scope("acme", "create_refund_request", "kp")
    assert await store.purge_keys(NOW + 1) == 0, "a pending call keeps its key"
    await store.transition("apr_p", frozenset({ApprovalStatus.PENDING}),
                           ApprovalStatus.REJECTED, NOW, reason="no")
    assert await store.key_state(scope) is not None
    assert await store.purge_keys(NOW + 1) == 1
    assert await store.key_state(scope) is None


async def test_concurrent_claims_have_one_winner(store: StateStore) -> None:
    results = await asyncio.gather(*(store.commit_forward(claim(f"req_{i}"), None, NOW)
                                     for i in range(50)))
    assert sum(r is None for r in results) == 1


async def test_a_key_is_executed_once_or_held_once_never_both(store: StateStore) -> None:
    """Forwarding and holding take the same row: of racing requests with one key, one
    wins, whichever act it was going to."""
    scope = Scope("acme", "create_refund_request", "both")

    async def forward(i: int) -> bool:
        return await store.commit_forward(claim(f"req_f{i}", scope=scope), None, NOW) is None

    async def held(i: int) -> bool:
        a = approval(f"apr_h{i}", key="both", decision_id=f"req_h{i}")
        return await store.commit_hold(a, claim(f"req_h{i}", scope=scope), nothing) is None

    results = await asyncio.gather(*(forward(i) if i % 2 else held(i) for i in range(40)))
    assert sum(results) == 1
    state = await store.key_state(scope)
    assert state is not None
    held_calls = [a for a in await store.list_approvals() if a.idempotency_key == "both"]
    if state.status is KeyStatus.HELD:
        assert [a.id for a in held_calls] == [state.approval.id if state.approval else ""]
    else:
        assert held_calls == []


LIMITS = Limits(max_tool_calls=5, max_calls_per_tool={"default": 3}, max_spend={"amount": 100})


def spend(amount: float | None = None, run: str = "run-1",
          limits: Limits = LIMITS) -> Reservation:
    return Reservation("acme", run, "refund", {} if amount is None else {"amount": amount},
                       limits)


async def test_budgets(store: StateStore) -> None:
    await store.commit_forward(None, spend(60), NOW)
    usage = await store.usage("acme", "run-1")
    assert (usage.tool_calls, usage.per_tool, usage.spent) == (1, {"refund": 1},
                                                               {"amount": 60.0})
    with pytest.raises(BudgetExceeded):
        await store.commit_forward(None, spend(41), NOW)
    assert (await store.usage("acme", "run-1")).spent == {"amount": 60.0}
    await store.commit_forward(None, spend(40), NOW)
    await store.undo_forward(None, spend(40), NOW)   # never sent: neither call nor spend
    usage = await store.usage("acme", "run-1")
    assert (usage.tool_calls, usage.spent) == (1, {"amount": 60.0})
    await store.commit_forward(None, spend(), NOW)
    await store.commit_forward(None, spend(), NOW)
    with pytest.raises(BudgetExceeded) as info:
        await store.commit_forward(None, spend(), NOW)
    assert info.value.extra["budget"] == "max_calls_per_tool"
    assert (await store.usage("acme", "run-1")).tool_calls == 3
    assert (await store.usage("acme", "run-2")).tool_calls == 0


async def test_over_budget_the_key_stays_free(store: StateStore) -> None:
    with pytest.raises(BudgetExceeded):
        await store.commit_forward(claim("req_a"), spend(101), NOW)
    assert await store.key_state(SCOPE) is None
    assert await store.commit_forward(claim("req_b"), spend(100), NOW) is None
    state = await store.key_state(SCOPE)
    assert state is not None
    assert state.request_id == "req_b"


async def test_a_lost_key_reserves_nothing(store: StateStore) -> None:
    assert await store.commit_forward(claim("req_a"), spend(10), NOW) is None
    assert await store.commit_forward(claim("req_b"), spend(10), NOW) is not None
    assert (await store.usage("acme", "run-1")).spent == {"amount": 10.0}


async def test_concurrent_reservations_never_overshoot(store: StateStore) -> None:
    limits = Limits(max_spend={"amount": 100})

    async def try_spend() -> bool:
        try:
            await store.commit_forward(None, spend(7, "run-c", limits), NOW)
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
    await hold(store, approval("apr_live", key="l"))
    await hold(store, approval("apr_dead", key="d"))
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


async def test_a_run_is_kept_while_a_call_of_it_waits(store: StateStore) -> None:
    """A held call may wait longer than the run retention; it must not then run against a
    fresh budget."""
    limits = Limits(max_tool_calls=10)
    await store.commit_forward(None, Reservation("acme", "run-1", "t", {}, limits), NOW)
    await hold(store, approval())   # run-1, tenant acme
    assert await store.purge_runs(NOW + 1) == 0
    assert (await store.usage("acme", "run-1")).tool_calls == 1
    await store.transition("apr_1", frozenset({ApprovalStatus.PENDING}),
                           ApprovalStatus.REJECTED, NOW, reason="no")
    assert await store.purge_runs(NOW + 1) == 1
    assert (await store.usage("acme", "run-1")).tool_calls == 0


async def test_a_call_not_sent_is_final(store: StateStore) -> None:
    """`not_sent` is stored with the code it is answered with, and like every final state
    lets its key go with retention."""
    await hold(store, approval("apr_ns", key="kns"))
    for to in (ApprovalStatus.APPROVED, ApprovalStatus.EXECUTING):
        assert await store.transition("apr_ns", frozenset(ApprovalStatus), to, NOW)
    done = await store.transition("apr_ns", frozenset({ApprovalStatus.EXECUTING}),
                                  ApprovalStatus.NOT_SENT, NOW, error="killed",
                                  reason="not sent: killed")
    assert done is not None
    assert (done.status, done.error, done.public()["error_code"]) == (
        ApprovalStatus.NOT_SENT, "killed", "killed")
    assert [a.id for a in await store.list_approvals(status="not_sent")] == ["apr_ns"]
    assert await store.purge_keys(NOW + 1) == 1


async def test_what_the_store_has_seen_of_tenants_and_agents(store: StateStore) -> None:
    """The kill switch's check of a scope: a tenant with a run budget, a key or a held call;
    an agent with a held call (no other table names agents)."""
    assert not await store.seen("tenant", "acme")
    assert not await store.seen("agent", "bot")
    await store.commit_forward(None, Reservation("globex", "run-g", "t", {}, Limits()), NOW)
    await store.commit_forward(claim("req_k", scope=Scope("initech", "t", "k")), None, NOW)
    await hold(store, approval())   # tenant acme, agent bot
    for tenant in ("acme", "globex", "initech"):
        assert await store.seen("tenant", tenant), tenant
    assert await store.seen("agent", "bot")
    assert not await store.seen("agent", "acme")
    assert not await store.seen("tenant", "bot")
    assert not await store.seen("tenant", "acm")
    assert not await store.seen("agent", "bo%")
