"""Idempotency keys (DESIGN §4, Stripe / IETF draft semantics): the rules, pure.

A key is scoped to `(tenant, tool, key)` and belongs to exactly one call: the first request
that reaches execution claims it (`in_flight`, with a lease) and stores its final answer
(`done`); a call the policy holds claims it as `held` by its approval. Both claims take the
same row of the store, in the same transaction as the budget reservation or the held call,
so a key is executed once or held once, never both.

The fingerprint is SHA-256 over the method, the tool, the canonical arguments and the
caller's `sub`: the same key with another call, or from another principal, is 422 — so one
principal can never be answered with another's stored result. `judge` is the one place
that says what a request finds when its key already has a state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gateway.core.canonical import canonical_json
from gateway.core.errors import IdempotencyInFlight, IdempotencyKeyReused

if TYPE_CHECKING:
    from gateway.approvals.model import Approval

# Keys of calls held by Toolgate 0.1 are bound to the call hash (tool, arguments, sub,
# tenant) rather than the fingerprint; the migration marks them with this prefix.
LEGACY = "call_hash:"
# The claim must outlive the call: storing the answer is retried for about a minute after
# the upstream answered, so the lease covers the tool's timeout plus this margin.
LEASE_MARGIN_S = 120


def fingerprint(method: str, tool: str, args: Mapping[str, Any], sub: str) -> str:
    return hashlib.sha256(canonical_json({"method": method, "tool": tool, "args": args,
                                          "sub": sub})).hexdigest()


def lease_for(lease_s: float, timeout_ms: int) -> float:
    """A claim's lease: the configured one, but never shorter than the call can take."""
    return max(lease_s, timeout_ms / 1000 + LEASE_MARGIN_S)


@dataclass(frozen=True)
class Scope:
    tenant: str          # "" for a principal without a tenant
    tool: str
    key: str


class KeyStatus(StrEnum):
    IN_FLIGHT = "in_flight"   # claimed by a request that is being forwarded
    DONE = "done"             # its answer is stored; retries replay it
    HELD = "held"             # its call waits for approval (or was decided)


@dataclass(frozen=True)
class KeyClaim:
    """What a request writes to take a key. `call_hash` is what the same call's key was
    bound to by Toolgate 0.1 (see `LEGACY`)."""

    scope: Scope
    fingerprint: str
    request_id: str
    lease_until: float
    call_hash: str = ""


@dataclass(frozen=True)
class KeyState:
    """What the store holds for a key."""

    scope: Scope
    fingerprint: str
    request_id: str
    status: KeyStatus
    lease_until: float
    answer_status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    created_at: float = 0.0
    approval: Approval | None = None     # the held call, when `status` is held


@dataclass(frozen=True)
class Answer:
    """A call's final answer, stored under its key for replays (5xx included)."""

    status: int
    content_type: str | None
    body: bytes


def judge(state: KeyState, claim: KeyClaim, now: float) -> KeyState | None:
    """What a request that would write `claim` finds when its key has `state`.

    Returns the state to answer from (a completed call to replay, or a held call), or None
    when the key may be claimed (a claim whose gateway died and whose lease ran out).
    Raises `IdempotencyKeyReused` (422) for another call, `IdempotencyInFlight` (409) while
    the first request still runs.
    """
    # SECURITY: the fingerprint includes the principal, so one principal can never replay
    # another's stored answer, even inside one tenant (the legacy call hash does too).
    mine = (LEGACY + claim.call_hash if state.fingerprint.startswith(LEGACY)
            else claim.fingerprint)
    if state.fingerprint != mine:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different call; "
                                   "use a new key for a new call")
    if state.status is not KeyStatus.IN_FLIGHT:
        return state
    if state.lease_until > now:
        raise IdempotencyInFlight("a request with this Idempotency-Key is still running; "
                                  "retry later", retry_after_s=1)
    return None


def may_take_over(state: KeyState, claim: KeyClaim, now: float) -> bool:
    """Whether `claim` may replace `state` in the store: same call, in flight, lease out."""
    return (state.status is KeyStatus.IN_FLIGHT and state.lease_until <= now
            and state.fingerprint == claim.fingerprint)
