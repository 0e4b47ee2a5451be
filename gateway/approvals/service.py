"""The approval queue's rules and its executor (DESIGN §5).

Rules, checked inside the store transaction that records a vote (so two approvers racing
see one consistent state): the call is still pending and not expired; the approver is not
the principal that asked (same `sub` and tenant); the approver holds one of the policy's
`approver_roles`; each approver counts once. When `approvals_required` distinct approvers
have voted, the call is `approved`.

Execution is exactly-once by construction: the only way to send a held call is the
conditional transition approved → executing, which one caller wins. The audit record of
every transition is written inside the transaction, before it commits (write-ahead).
Each gateway instance heartbeats in the store while it runs and owns the calls it sends.
A call left `executing` by an instance that stopped (no heartbeat for ten seconds, on this
replica or another) is sent again only when it carries an Idempotency-Key the upstream
dedups on; otherwise it becomes `outcome_unknown` for a person to resolve — never a silent
second execution. A call a live instance is still sending is never taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

from prometheus_client import Histogram

from gateway import tasks
from gateway.approvals.notify import Notifier
from gateway.audit.log import AuditLog
from gateway.auth import Principal
from gateway.bundle.specs import SpecSet
from gateway.core.errors import (
    AlreadyApprovedByYou,
    ApprovalExpired,
    ApprovalNotPending,
    ApproverRoleRequired,
    AuditUnavailable,
    BudgetExceeded,
    GatewayError,
    NotFound,
    SelfApproval,
)
from gateway.state.budgets import BudgetSettings
from gateway.state.killswitch import KillSwitches
from gateway.store.base import Approval, ApprovalStatus, StateStore
from gateway.upstreams.client import Forwarder

log = logging.getLogger("toolgate")
PENDING = frozenset({ApprovalStatus.PENDING})
APPROVED = frozenset({ApprovalStatus.APPROVED})
EXECUTING = frozenset({ApprovalStatus.EXECUTING})
FINISH_ATTEMPTS = 12  # about 40 s of retries
PURGE_INTERVAL_S = 60


def approver_of(principal: Principal) -> dict[str, Any]:
    return {**principal.as_audit(), "roles": list(principal.roles)}


def check_vote(approval: Approval, approver: Principal, now: float) -> None:
    """Refuse a vote that the rules do not allow; pure, so it runs inside the transaction."""
    if approval.status is not ApprovalStatus.PENDING:
        raise ApprovalNotPending(f"approval {approval.id} is {approval.status}, not pending",
                                 approval_status=str(approval.status))
    if now >= approval.expires_at:
        raise ApprovalExpired(f"approval {approval.id} expired; the call will not run")
    # SECURITY: the principal that asked can never approve its own call, whatever roles
    # its token carries.
    if approver.sub == approval.sub and approver.tenant == approval.tenant:
        raise SelfApproval("an approver cannot approve a call made by their own principal")
    if approval.approver_roles and not set(approval.approver_roles) & set(approver.roles):
        raise ApproverRoleRequired(
            f"approving this call needs one of the roles {', '.join(approval.approver_roles)}",
            approver_roles=list(approval.approver_roles))
    if any(v.approver.get("sub") == approver.sub for v in approval.votes):
        raise AlreadyApprovedByYou("you already approved this call; it needs "
                                   f"{approval.approvals_required} distinct approvers")


class ApprovalService:
    def __init__(self, store: StateStore, forwarder: Forwarder, audit: AuditLog,
                 specs: SpecSet, notifier: Notifier, *, wait_time: Histogram,
                 kills: KillSwitches, budgets: BudgetSettings, sweep_interval_s: float,
                 wait_s: float, idempotency_retention_s: float) -> None:
        self._store = store
        self._forwarder = forwarder
        self._audit = audit
        self._specs = specs
        self.notifier = notifier
        self._sweep_interval = sweep_interval_s
        self._wait = wait_s
        self._wait_time = wait_time
        self._kills = kills
        self._budgets = budgets
        # Who is sending a call; a call whose sender has not been heard from for
        # `_takeover_after` is abandoned (its gateway stopped) and may be taken over.
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._takeover_after = max(10.0, 10 * sweep_interval_s)
        self._retention = idempotency_retention_s
        self._next_purge = 0.0
        self._running: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- audit -------------------------------------------------------------------------------

    def record(self, event: str, approval: Approval, **fields: Any) -> None:
        """An `approval` audit record linked to the original call. Raises on sink failure."""
        self._audit.write("approval", {
            "decision_id": approval.decision_id, "approval_id": approval.id, "event": event,
            "status": str(approval.status), "tool": approval.tool,
            "principal": dict(approval.principal), **fields})

    def _decided(self, event: str, approval: Approval, actor: dict[str, Any] | None) -> None:
        """A held call got its decision: notify, and measure how long it waited."""
        self._wait_time.labels(event).observe(max(0.0, time.time() - approval.created_at))
        self.notifier.notify(event, approval, actor)

    def _record_quietly(self, kind: str, approval: Approval, **fields: Any) -> None:
        """For records after the upstream acted: a lost record must not undo the result."""
        try:
            self._audit.write(kind, {"decision_id": approval.decision_id,
                                     "approval_id": approval.id, "tool": approval.tool,
                                     "principal": dict(approval.principal), **fields})
        except AuditUnavailable:
            log.critical("%s record for approval %s lost", kind, approval.id)

    def refused(self, approval_id: str, actor: Principal | None, exc: GatewayError,
                approval: Approval | None = None) -> None:
        """Every refused approval action is audited (best effort: the refusal stands)."""
        with contextlib.suppress(AuditUnavailable):
            self._audit.write("approval", {
                "decision_id": approval.decision_id if approval else None,
                "approval_id": approval_id, "event": "refused", "code": str(exc.code),
                "message": exc.message, "actor": approver_of(actor) if actor else None})

    # -- approver actions --------------------------------------------------------------------

    async def approve(self, approval_id: str, approver: Principal,
                      comment: str | None) -> Approval:
        now = time.time()
        actor = approver_of(approver)

        def check(current: Approval) -> None:
            check_vote(current, approver, now)

        def record(after: Approval) -> None:
            self.record("approval_vote", after, actor=actor, comment=comment,
                        votes=len(after.votes), approvals_required=after.approvals_required)
            if after.status is ApprovalStatus.APPROVED:
                self.record("approved", after, actor=actor)

        try:
            approval = await self._store.vote(approval_id, actor, comment, now, check=check,
                                              record=record)
        except KeyError:
            raise NotFound(f"no approval {approval_id}") from None
        except (ApprovalNotPending, ApprovalExpired, SelfApproval, ApproverRoleRequired,
                AlreadyApprovedByYou) as exc:
            self.refused(approval_id, approver, exc, await self._store.get_approval(
                approval_id))
            if isinstance(exc, ApprovalExpired):
                await self.sweep_once()
            raise
        if approval.status is ApprovalStatus.APPROVED:
            self._decided("approved", approval, actor)
            task = self.start_execution(approval.id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self._wait)
            approval = await self._store.get_approval(approval_id) or approval
        return approval

    async def reject(self, approval_id: str, approver: Principal, reason: str) -> Approval:
        now = time.time()
        actor = approver_of(approver)
        current = await self._store.get_approval(approval_id)
        if current is None:
            raise NotFound(f"no approval {approval_id}")
        try:
            if current.status is not ApprovalStatus.PENDING:
                raise ApprovalNotPending(f"approval {approval_id} is {current.status}, "
                                         "not pending", approval_status=str(current.status))
            if now >= current.expires_at:
                raise ApprovalExpired(f"approval {approval_id} expired")
            if approver.sub == current.sub and approver.tenant == current.tenant:
                raise SelfApproval("an approver cannot decide a call made by their own "
                                   "principal")
            if current.approver_roles and not set(current.approver_roles) & set(
                    approver.roles):
                raise ApproverRoleRequired(
                    "rejecting this call needs one of the roles "
                    f"{', '.join(current.approver_roles)}",
                    approver_roles=list(current.approver_roles))
        except GatewayError as exc:
            self.refused(approval_id, approver, exc, current)
            raise
        rejected = await self._store.transition(
            approval_id, PENDING, ApprovalStatus.REJECTED, now, reason=reason,
            record=lambda after: self.record("rejected", after, actor=actor, reason=reason))
        if rejected is None:  # decided by someone else meanwhile
            latest = await self._store.get_approval(approval_id)
            late = ApprovalNotPending(f"approval {approval_id} is no longer pending")
            self.refused(approval_id, approver, late, latest)
            raise late
        self._decided("rejected", rejected, actor)
        return rejected

    # -- execution ---------------------------------------------------------------------------

    def start_execution(self, approval_id: str) -> asyncio.Task[None]:
        """Run the approved call in a task of the service's own (not the approver's
        request's), so an approver hanging up cannot cancel a call half-sent."""
        return self._spawn(approval_id, self._execute(approval_id))

    def _spawn(self, approval_id: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._running.get(approval_id)
        if task is not None:
            work.close()
            return task
        task = asyncio.create_task(work, name=f"approval {approval_id}")
        self._running[approval_id] = task
        task.add_done_callback(lambda _: self._running.pop(approval_id, None))
        return task

    async def _execute(self, approval_id: str) -> None:
        try:
            current = await self._store.get_approval(approval_id)
            if current is None or current.status is not ApprovalStatus.APPROVED:
                return
            claimed = await self._store.transition(
                approval_id, APPROVED, ApprovalStatus.EXECUTING, time.time(),
                attempts=current.attempts + 1, owner=self.instance,
                record=lambda after: self.record("executing", after, attempt=after.attempts,
                                                 owner=self.instance))
            if claimed is not None:  # else another caller won the transition: it sends
                await self._send(claimed)
        except GatewayError as exc:
            # Nothing was sent (`_send` hands a claimed call back before it can fail here):
            # the sweeper tries again while it is approved.
            log.warning("approval %s not started: %s", approval_id, exc.message)
        except Exception:
            log.exception("executing approval %s failed unexpectedly", approval_id)

    async def _send(self, approval: Approval) -> None:
        spec = self._specs.tools.get(approval.tool)
        if spec is None or not self._forwarder.knows(approval.call.upstream):
            # Removing a tool (or its upstream) from the config revokes its held calls.
            await self._finish(approval, ApprovalStatus.FAILED,
                               reason="not sent: the tool or its upstream is no longer "
                                      "configured")
            return
        if approval.call.digest() != approval.call_digest:
            await self._finish(approval, ApprovalStatus.FAILED,
                               reason="the stored call failed its integrity check; not sent")
            return
        principal = approval.principal
        switch = self._kills.matching(principal.get("tenant"), principal.get("agent"),
                                      approval.tool)
        if switch is not None:
            await self._finish(approval, ApprovalStatus.FAILED, error="killed",
                               reason=f"not sent: kill switch {switch.scope}: {switch.reason}")
            return
        tenant, run = str(principal.get("tenant") or ""), approval.call.run_id
        limits = self._budgets.for_tenant(principal.get("tenant"))
        reserved = run is not None and not limits.empty
        if reserved:
            assert run is not None
            try:
                # An approved call still counts against its run's budget, reserved now.
                await self._store.reserve(tenant, run, approval.tool, approval.call.spend,
                                          limits, time.time())
            except BudgetExceeded as exc:
                await self._finish(approval, ApprovalStatus.FAILED, error=str(exc.code),
                                   reason=f"not sent: {exc.message}")
                return
            except GatewayError:
                # The store failed before anything was sent: hand the call back (approved)
                # for the sweeper to try again, rather than leave it looking half-sent.
                await self._store.transition(approval.id, EXECUTING, ApprovalStatus.APPROVED,
                                             time.time(), owner_is=(self.instance,),
                                             owner=None)
                raise
        start = time.perf_counter()
        try:
            resp = await self._forwarder.send(
                approval.call, request_id=approval.decision_id,
                client_ip=approval.call.client_ip, host=approval.call.host,
                scheme=approval.call.scheme, idempotency_key=approval.idempotency_key,
                timeout_ms=spec.timeout_ms)
        except GatewayError as exc:
            if reserved:
                await self._give_back(tenant, run, approval.call.spend)
            await self._finish(approval, ApprovalStatus.FAILED, reason=exc.message,
                               error=str(exc.code),
                               latency_ms=round((time.perf_counter() - start) * 1000, 3))
            return
        if reserved and resp.status >= 400:
            await self._give_back(tenant, run, approval.call.spend)
        await self._finish(approval, ApprovalStatus.EXECUTED, upstream_status=resp.status,
                           result_status=resp.status, result_body=resp.body,
                           result_content_type=resp.headers.get("Content-Type"),
                           latency_ms=round(resp.latency_ms, 3))

    async def _give_back(self, tenant: str, run: str | None,
                         spend: Mapping[str, float]) -> None:
        if run is None or not spend:
            return
        try:
            await self._store.release_spend(tenant, run, spend, time.time())
        except GatewayError as exc:
            log.warning("spend of run %s not given back: %s", run, exc.message)

    async def _finish(self, approval: Approval, status: ApprovalStatus, *,
                      reason: str | None = None, error: str | None = None,
                      upstream_status: int | None = None, latency_ms: float | None = None,
                      **result: Any) -> None:
        def record(after: Approval) -> None:
            self._record_quietly("outcome", after, status=str(status), error=error,
                                 upstream_status=upstream_status, reason=reason,
                                 attempt=after.attempts, latency_ms={"upstream": latency_ms})

        # The upstream has answered: its result must not be lost to a passing store error
        # (the call would then look unfinished and could be sent again after a restart).
        # Only the owner may finish it: if another replica took the call over meanwhile,
        # its own attempt decides, and this one is recorded but not stored.
        delay = 0.1
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                done = await self._store.transition(approval.id, EXECUTING, status,
                                                    time.time(), record=record,
                                                    owner_is=(self.instance,),
                                                    reason=reason, error=error, **result)
            except GatewayError as exc:
                log.warning("storing the result of approval %s failed (%d/%d): %s",
                          approval.id, attempt, FINISH_ATTEMPTS, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if done is not None:
                self.notifier.notify(str(status), done)
            else:
                self._record_quietly("outcome", approval, status=str(status), error=error,
                                     upstream_status=upstream_status, reason=reason,
                                     stored=False)
                log.critical("approval %s was taken over by another gateway while this one "
                             "sent it; its answer (%s) is only in the audit log",
                             approval.id, upstream_status)
            return
        log.critical("the result of approval %s (%s) could not be stored; it stays "
                     "executing", approval.id, status)

    # -- background: recovery and the sweeper ------------------------------------------------

    async def _resend(self, approval: Approval) -> None:
        again = await self._store.transition(
            approval.id, EXECUTING, ApprovalStatus.EXECUTING, time.time(),
            owner_is=(approval.owner,), attempts=approval.attempts + 1, owner=self.instance,
            record=lambda after: self.record("resending", after, attempt=after.attempts,
                                             owner=self.instance,
                                             abandoned_by=approval.owner))
        if again is not None:
            await self._send(again)

    async def recover(self) -> None:
        """Settle calls left `executing` by a gateway instance that stopped (no heartbeat for
        `takeover_after_s`), on this replica or another. A call a live instance is sending
        is never touched; approved calls are started by `sweep_once`."""
        for approval in await self._store.abandoned(time.time(), self._takeover_after):
            if approval.resend_safe:
                # The upstream gets the same Idempotency-Key again and dedups on it.
                self._spawn(approval.id, self._resend(approval))
            else:
                unknown = await self._store.transition(
                    approval.id, EXECUTING, ApprovalStatus.OUTCOME_UNKNOWN, time.time(),
                    owner_is=(approval.owner,),
                    reason="the gateway stopped while this call was being sent, and its tool "
                           "has no idempotency key the upstream could dedup on, so it is not "
                           "sent again; check the upstream and resolve it by hand",
                    record=lambda after: self.record("outcome_unknown", after))
                if unknown is not None:
                    self.notifier.notify("outcome_unknown", unknown)

    async def sweep_once(self) -> None:
        expired = await self._store.expire_due(
            time.time(), lambda after: self.record("expired", after))
        for approval in expired:
            self._decided("expired", approval, None)
        for approval in await self._store.in_states(APPROVED):
            self.start_execution(approval.id)
        now = time.time()
        if now >= self._next_purge:  # a DELETE a minute is plenty for a 24 h retention
            await self._store.idem_purge(now - self._retention)
            self._next_purge = now + PURGE_INTERVAL_S

    async def _sweep(self) -> None:
        while True:
            try:
                await self._store.heartbeat(self.instance, time.time())
                await self.recover()
                await self.sweep_once()
            except GatewayError as exc:
                log.warning("approval sweep failed: %s", exc.message)
            await asyncio.sleep(self._sweep_interval)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="approval sweeper")

    async def close(self) -> None:
        await tasks.stop(self._sweeper)
        # Let calls already sent finish and record their results.
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=10)

