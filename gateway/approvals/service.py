"""The approval service: what an approver does to a held call (DESIGN §5).

`approve` records a vote in one store transaction that checks the rules
(`gateway.approvals.rules`) and writes the audit record before it commits; when enough
distinct approvers have voted the call is `approved` and the executor sends it, and the
approver's request waits up to `approvals.wait_ms` to answer with the result. `reject`
moves a pending call to `rejected` the same way. Every refusal is an `approval` record with
event `refused`. `expire_due` is the sweeper's: pending calls past their TTL expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Histogram

from gateway.approvals.executor import Executor
from gateway.approvals.model import Approval, ApprovalStatus
from gateway.approvals.notify import Notifier
from gateway.approvals.rules import check_decision, check_vote
from gateway.audit import records
from gateway.audit.log import AuditLog
from gateway.auth import Principal
from gateway.core.clock import Clock
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    AuditUnavailable,
    GatewayError,
    NotFound,
    SelfApproval,
)
from gateway.store.base import StateStore

log = logging.getLogger("toolgate")
PENDING = frozenset({ApprovalStatus.PENDING})
_RULES = (ApprovalNotPending, ApprovalExpired, SelfApproval, ApproverRoleRequired,
          AlreadyApprovedByYou)


class ApprovalService:
    def __init__(self, *, store: StateStore, audit: AuditLog, executor: Executor,
                 notifier: Notifier, wait_time: Histogram, wait_s: float,
                 clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self.executor = executor
        self.notifier = notifier
        self._wait_time = wait_time
        self._wait = wait_s
        self._clock = clock

    def _decided(self, event: str, approval: Approval, actor: dict[str, Any] | None) -> None:
        """A held call got its decision: notify, and measure how long it waited."""
        self._wait_time.labels(event).observe(
            max(0.0, self._clock.time() - approval.created_at))
        self.notifier.notify(event, approval, actor)

    def refused(self, approval_id: str, actor: Principal | None, exc: GatewayError,
                approval: Approval | None = None) -> None:
        """Every refused approval action is audited (best effort: the refusal stands)."""
        with contextlib.suppress(AuditUnavailable):
            self._audit.write("approval", records.refusal(approval_id, actor, exc, approval))

    @contextlib.asynccontextmanager
    async def _refusals(self, approval_id: str, approver: Principal) -> AsyncIterator[None]:
        """An approver's action the store or the rules refuse: audited, then raised (no
        such approval is a 404)."""
        try:
            yield
        except KeyError:
            missing = NotFound("no such approval")
            self.refused(approval_id, approver, missing)
            raise missing from None
        except _RULES as exc:
            self.refused(approval_id, approver, exc,
                         await self._store.get_approval(approval_id))
            raise

    async def approve(self, approval_id: str, approver: Principal,
                      comment: str | None) -> Approval:
        now = self._clock.time()
        actor = records.actor(approver)

        def record(after: Approval) -> None:
            self.executor.record("approval_vote", after, actor=actor, comment=comment,
                                  votes=len(after.votes),
                                  approvals_required=after.approvals_required)
            if after.status is ApprovalStatus.APPROVED:
                self.executor.record("approved", after, actor=actor)

        try:
            async with self._refusals(approval_id, approver):
                approval = await self._store.vote(
                    approval_id, actor, comment, now,
                    check=lambda current: check_vote(current, approver, now), record=record)
        except ApprovalExpired:
            await self.expire_due()   # a vote found it expired: expire every due call now
            raise
        if approval.status is ApprovalStatus.APPROVED:
            self._decided("approved", approval, actor)
            task = self.executor.start(approval.id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self._wait)
            approval = await self._store.get_approval(approval_id) or approval
        return approval

    async def reject(self, approval_id: str, approver: Principal, reason: str) -> Approval:
        now = self._clock.time()
        actor = records.actor(approver)
        async with self._refusals(approval_id, approver):
            # The rules are checked inside the transaction that records the rejection.
            rejected = await self._store.transition(
                approval_id, PENDING, ApprovalStatus.REJECTED, now, reason=reason,
                check=lambda current: check_decision(current, approver, now, "reject"),
                record=lambda after: self.executor.record("rejected", after, actor=actor,
                                                           reason=reason))
        if rejected is None:  # pragma: no cover - the check saw it pending, under the lock
            raise ApprovalNotPending(f"approval {approval_id} is no longer pending")
        self._decided("rejected", rejected, actor)
        return rejected

    async def expire_due(self) -> None:
        expired = await self._store.expire_due(
            self._clock.time(), lambda after: self.executor.record("expired", after))
        for approval in expired:
            self._decided("expired", approval, None)
