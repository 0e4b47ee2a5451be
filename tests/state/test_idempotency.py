"""The key rules, pure: the fingerprint, the lease, and what a request finds."""

from __future__ import annotations

import pytest

from gateway.core.errors import IdempotencyInFlight, IdempotencyKeyReused
from gateway.state.idempotency import (
    LEASE_MARGIN_S,
    LEGACY,
    KeyClaim,
    KeyState,
    KeyStatus,
    Scope,
    fingerprint,
    judge,
    lease_for,
    may_take_over,
)

SCOPE = Scope("acme", "refund", "k")


def state(status: KeyStatus, fp: str = "fp", lease_until: float = 100.0) -> KeyState:
    return KeyState(SCOPE, fp, "req_0", status, lease_until)


def claim(fp: str = "fp", call_hash: str = "hash") -> KeyClaim:
    return KeyClaim(SCOPE, fp, "req_1", 200.0, call_hash)


def test_the_fingerprint_binds_method_tool_arguments_and_principal() -> None:
    base = fingerprint("POST", "refund", {"a": 1, "b": 2}, "svc")
    assert base == fingerprint("POST", "refund", {"b": 2, "a": 1}, "svc")  # canonical
    assert len({base, fingerprint("PUT", "refund", {"a": 1, "b": 2}, "svc"),
                fingerprint("POST", "other", {"a": 1, "b": 2}, "svc"),
                fingerprint("POST", "refund", {"a": 1, "b": 3}, "svc"),
                fingerprint("POST", "refund", {"a": 1, "b": 2}, "svc2")}) == 5


def test_the_lease_outlives_the_call() -> None:
    assert lease_for(60, 5000) == 5 + LEASE_MARGIN_S
    assert lease_for(3600, 5000) == 3600


@pytest.mark.parametrize("status", [KeyStatus.DONE, KeyStatus.HELD])
def test_a_completed_or_held_key_is_answered(status: KeyStatus) -> None:
    found = state(status)
    assert judge(found, claim(), 50.0) is found


@pytest.mark.parametrize("status", list(KeyStatus))
def test_another_call_is_422_whatever_the_state(status: KeyStatus) -> None:
    with pytest.raises(IdempotencyKeyReused):
        judge(state(status), claim("other"), 50.0)


def test_in_flight_is_409_until_the_lease_runs_out() -> None:
    with pytest.raises(IdempotencyInFlight):
        judge(state(KeyStatus.IN_FLIGHT), claim(), 99.9)
    assert judge(state(KeyStatus.IN_FLIGHT), claim(), 100.0) is None


def test_a_key_held_by_0_1_is_judged_by_its_call_hash() -> None:
    legacy = state(KeyStatus.HELD, LEGACY + "hash")
    assert judge(legacy, claim(), 50.0) is legacy
    with pytest.raises(IdempotencyKeyReused):
        judge(legacy, claim(call_hash="another"), 50.0)


def test_only_a_lapsed_claim_of_the_same_call_is_taken_over() -> None:
    mine = claim()
    assert may_take_over(state(KeyStatus.IN_FLIGHT), mine, 100.0)
    assert not may_take_over(state(KeyStatus.IN_FLIGHT), mine, 99.0)
    assert not may_take_over(state(KeyStatus.IN_FLIGHT, "other"), mine, 100.0)
    assert not may_take_over(state(KeyStatus.DONE), mine, 1e12)
    assert not may_take_over(state(KeyStatus.HELD), mine, 1e12)
