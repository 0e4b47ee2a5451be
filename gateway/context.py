"""The call model and what the pipeline learns about a call.

`Call` is what an entrance hands the pipeline: transport facts only, no aiohttp types, so an
MCP `tools/call` entrance can produce one too. `CallContext` collects the facts each stage
establishes; `Runtime` is everything long-lived the stages use (built once per process).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.approvals.service import ApprovalService
from gateway.audit.log import AuditLog
from gateway.auth import Principal, TokenVerifier
from gateway.bundle.specs import SpecSet, ToolSpec
from gateway.config import Settings
from gateway.core.decision import PolicyDecision
from gateway.metrics import Metrics
from gateway.policy import PolicyEngine
from gateway.state.budgets import Usage
from gateway.state.idempotency import IdempotencyRecord, Scope
from gateway.state.killswitch import KillSwitches
from gateway.store import StateStore
from gateway.store.base import Approval
from gateway.tasks import Background
from gateway.upstreams.client import Forwarder


@dataclass(frozen=True)
class Call:
    request_id: str
    method: str
    raw_path: str                            # still percent-encoded, no query
    query: tuple[tuple[str, str], ...]       # decoded (name, value) pairs, in order
    query_string: str                        # raw, forwarded as is
    headers: Mapping[str, str]               # case-insensitive
    read_body: Callable[[int], Awaitable[bytes]]  # raises BodyTooLarge past the limit
    source_ip: str
    host: str
    scheme: str
    received_at: float                       # epoch seconds
    started: float                           # perf_counter at arrival


@dataclass
class CallContext:
    call: Call
    stage: str = ""
    body: bytes = b""
    body_args: dict[str, Any] = field(default_factory=dict)
    spec: ToolSpec | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    args: dict[str, Any] | None = None
    principal: Principal | None = None
    run_id: str | None = None
    idempotency_key: str | None = None
    policy: PolicyDecision | None = None
    policy_ms: float = 0.0
    # A retry answered from what is stored for its key: the held call, or the completed
    # (replayed) answer.
    bound: Approval | IdempotencyRecord | None = None
    usage: Usage | None = None            # the run's counters before this call
    reserved: dict[str, float] | None = None   # spend reserved for this call (budget stage)
    claimed: Scope | None = None          # the idempotency key this call holds (claim stage)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    specs: SpecSet
    verifier: TokenVerifier
    engine: PolicyEngine
    store: StateStore
    forwarder: Forwarder
    audit: AuditLog
    environ: Mapping[str, str]
    metrics: Metrics
    approvals: ApprovalService
    kills: KillSwitches
    background: Background
