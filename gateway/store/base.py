"""The state-store interface: durable state shared by the pipeline and the admin API.

Implementations: SQLite (`gateway.store.sqlite`, the embedded default). Every method raises
`StoreUnavailable` when the backing database cannot be reached, so callers fail closed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from gateway.state.budgets import Limits, Usage
    from gateway.state.idempotency import Claim, IdempotencyRecord, Scope


class ApprovalStatus(StrEnum):
    """The durable state machine of a held call (DESIGN §5):

    pending → approved → executing → executed | failed | outcome_unknown
    pending → rejected | expired
    """

    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
    OUTCOME_UNKNOWN = "outcome_unknown"
    REJECTED = "rejected"
    EXPIRED = "expired"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys, no spaces) for hashing and storing arguments."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def call_hash(tool: str, args: Mapping[str, Any], sub: str, tenant: str | None) -> str:
    """What an approval binds to: the tool, the canonical arguments, who asked, for whom."""
    return hashlib.sha256(canonical_json(
        {"tool": tool, "args": args, "sub": sub, "tenant": tenant})).hexdigest()


@dataclass(frozen=True)
class StoredCall:
    """Exactly what will be sent upstream if the call is approved."""

    upstream: str
    method: str
    path: str                      # raw upstream path, parameters already encoded
    query: str
    headers: Mapping[str, str]     # forwarded agent headers (no credentials)
    body: bytes
    client_ip: str = ""
    host: str = ""
    scheme: str = "http"
    run_id: str | None = None      # the run whose budget the call counts against
    spend: Mapping[str, float] = field(default_factory=dict)

    def digest(self) -> str:
        """SHA-256 of the request bytes; checked again just before the call is sent."""
        h = hashlib.sha256()
        for part in (self.upstream, self.method, self.path, self.query):
            h.update(part.encode() + b"\0")
        h.update(canonical_json(dict(self.headers)) + b"\0")
        h.update(self.body)
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "method": self.method, "path": self.path,
                "query": self.query, "headers": dict(self.headers),
                "client_ip": self.client_ip, "host": self.host, "scheme": self.scheme,
                "run_id": self.run_id, "spend": dict(self.spend)}


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
    call: StoredCall
    call_digest: str = ""
    idempotency_key: str | None = None
    resend_safe: bool = False      # the upstream dedups by the forwarded Idempotency-Key
    updated_at: float = 0.0
    reason: str | None = None      # why rejected / failed / how resolved
    result_status: int | None = None
    result_content_type: str | None = None
    result_body: bytes | None = None
    attempts: int = 0
    owner: str | None = None       # the gateway instance sending it (while executing)
    error: str | None = None       # the code a failed call failed with
    votes: tuple[Vote, ...] = field(default=())

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

    def public(self) -> dict[str, Any]:
        """The approval as the APIs show it (never the stored headers)."""
        return {
            "id": self.id, "status": str(self.status), "tool": self.tool,
            "args": self.args, "reasons": list(self.reasons), "principal": dict(self.principal),
            "decision_id": self.decision_id, "call_hash": self.call_hash,
            "approvals_required": self.approvals_required,
            "approver_roles": list(self.approver_roles),
            "approvals": [v.public() for v in self.votes],
            "created_at": rfc3339(self.created_at), "expires_at": rfc3339(self.expires_at),
            "updated_at": rfc3339(self.updated_at or self.created_at),
            "idempotency_key": self.idempotency_key, "reason": self.reason,
            "result": self.result(),
        }


# Called inside a store transaction with an approval; raising aborts the transaction. Used
# to refuse a vote (a check) and to write the audit record before the change commits.
ApprovalHook = Callable[[Approval], None]


class StateStore(Protocol):
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    async def create_approval(self, approval: Approval) -> None:
        """Persist a new pending approval. Raises `ApprovalKeyTaken` when (tenant, tool,
        idempotency key) already has one."""

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def find_approval(self, tenant: str | None, tool: str,
                            idempotency_key: str) -> Approval | None: ...

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]: ...

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        """Atomically: run `check` on the current approval (it raises to refuse), add the
        vote, move pending → approved when enough distinct approvers have voted, and call
        `record` with the result before committing. Raises `KeyError` for an unknown id."""

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         **fields: Any) -> Approval | None:
        """Move to `to` only if the current state is in `from_states` — and, with
        `owner_is=(x,)`, only if the owner is still x — (None if not), calling `record`
        with the result before committing."""

    async def heartbeat(self, instance: str, now: float) -> None:
        """This gateway instance is alive (it owns the calls it is sending)."""

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        """Calls left `executing` by an instance with no heartbeat for `stale_s`."""

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        """Every pending approval past its expiry, now expired (`record` called for each)."""

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]: ...

    # -- idempotency (gateway.state.idempotency) ---------------------------------------------------

    async def idem_get(self, scope: Scope) -> IdempotencyRecord | None: ...

    async def idem_claim(self, scope: Scope, fingerprint: str, request_id: str, now: float,
                         lease_s: float) -> Claim:
        """Claim the key for this request, or return the record already there. An
        in-flight claim whose lease has run out is taken over (its gateway died)."""

    async def idem_complete(self, scope: Scope, request_id: str, status: int,
                            content_type: str | None, body: bytes, now: float) -> None:
        """Store the final answer, if this request still holds the claim."""

    async def idem_release(self, scope: Scope, request_id: str) -> None:
        """Drop an in-flight claim that never reached the upstream."""

    async def idem_purge(self, before: float) -> int:
        """Delete completed records older than `before`; how many were deleted."""

    # -- run budgets (gateway.state.budgets) -------------------------------------------------------

    async def usage(self, tenant: str, run_id: str) -> Usage: ...

    async def reserve(self, tenant: str, run_id: str, tool: str, spend: Mapping[str, float],
                      limits: Limits, now: float) -> Usage:
        """Atomically check (`check_reservation`) and count one more call; raises
        `BudgetExceeded` and changes nothing when it would overshoot."""

    async def release_spend(self, tenant: str, run_id: str, spend: Mapping[str, float],
                            now: float, uncount: str | None = None) -> None: ...

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch: ...

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None: ...

    async def kill_list(self) -> list[KillSwitch]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class KillSwitch:
    scope: str                     # global | tenant:<t> | agent:<a> | tool:<name>
    reason: str
    actor: Mapping[str, Any]
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"scope": self.scope, "reason": self.reason, "actor": dict(self.actor),
                "since": rfc3339(self.created_at)}


def takeover(existing: IdempotencyRecord, fingerprint: str, now: float) -> bool:
    """Whether a new request may take over a claim: same call, in flight, lease run out."""
    return (existing.state == "in_flight" and existing.lease_until <= now
            and existing.fingerprint == fingerprint)


def usage_to_json(usage: Usage) -> str:
    return orjson.dumps({"tool_calls": usage.tool_calls, "per_tool": usage.per_tool,
                         "spent": usage.spent}).decode()


def usage_from_json(text: str | None) -> Usage:
    from gateway.state.budgets import Usage  # noqa: PLC0415 (budgets imports errors only; cycle-free)

    if not text:
        return Usage()
    raw = orjson.loads(text)
    return Usage(int(raw["tool_calls"]), {k: int(v) for k, v in raw["per_tool"].items()},
                 {k: float(v) for k, v in raw["spent"].items()})


class ApprovalKeyTaken(Exception):
    """An approval already exists for this (tenant, tool, idempotency key)."""
