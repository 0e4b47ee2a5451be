"""The state-store interface: durable state shared by the pipeline and the admin API.

Implementations: SQLite (`gateway.store.sqlite`, the embedded default). Every method raises
`StoreUnavailable` when the backing database cannot be reached, so callers fail closed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    EXECUTED = "executed"
    FAILED = "failed"
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
    idempotency_key: str | None = None
    result_status: int | None = None
    result_body: bytes | None = None
    decisions: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def sub(self) -> str:
        return str(self.principal["sub"])

    @property
    def tenant(self) -> str | None:
        tenant = self.principal.get("tenant")
        return None if tenant is None else str(tenant)

    def public(self) -> dict[str, Any]:
        """The approval as the API shows it (never the stored headers)."""
        return {
            "id": self.id, "status": str(self.status), "tool": self.tool,
            "args": self.args, "reasons": list(self.reasons), "principal": dict(self.principal),
            "decision_id": self.decision_id, "call_hash": self.call_hash,
            "approvals_required": self.approvals_required,
            "approver_roles": list(self.approver_roles),
            "created_at": rfc3339(self.created_at), "expires_at": rfc3339(self.expires_at),
            "idempotency_key": self.idempotency_key,
        }


class StateStore(Protocol):
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    async def create_approval(self, approval: Approval) -> None: ...

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def close(self) -> None: ...
