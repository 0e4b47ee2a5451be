"""Idempotency keys (DESIGN §4, Stripe / IETF draft semantics) — the pure part.

Scope `(tenant, tool, key)`; fingerprint SHA-256 over the method, the tool, the canonical
arguments and the principal's `sub` (so a key cannot replay another principal's answer).
The first request that reaches execution claims the key (a lease) and stores its final
status and body, 5xx included; a replay returns them. A request with the same key and
another fingerprint is 422; one that finds the key still claimed is 409. A claim whose
lease ran out (its gateway crashed mid-call) can be taken over, so a key is never blocked
forever. Nothing is stored for a request that never reached execution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.store.base import canonical_json


def fingerprint(method: str, tool: str, args: Mapping[str, Any], sub: str) -> str:
    return hashlib.sha256(canonical_json({"method": method, "tool": tool, "args": args,
                                          "sub": sub})).hexdigest()


@dataclass(frozen=True)
class Scope:
    tenant: str          # "" for a principal without a tenant
    tool: str
    key: str


class ClaimState(StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


@dataclass(frozen=True)
class IdempotencyRecord:
    scope: Scope
    fingerprint: str
    request_id: str
    state: ClaimState
    lease_until: float
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class Claim:
    """The result of trying to claim a key: `record` is ours when `claimed` is true,
    otherwise the record that is already there."""

    claimed: bool
    record: IdempotencyRecord
