"""The executor: sends an approved call — once.

Exactly-once by construction: the only way to send a held call is the conditional
transition approved → executing, which one caller wins. Before sending, the executor
applies the pipeline's own rules, not copies of them: the kill switch
(`KillSwitches.refusal`), the run budget (`reservation` + `StateStore.commit_forward`),
and the call is sent by the same client as any forwarded call (`Upstreams.send`), exactly as
stored — after its digest is checked again. Each gateway instance owns the calls it sends;
a call another instance abandoned (`resend`) is sent again only when it carries an
Idempotency-Key the upstream dedups on (the sweeper decides).

How a call ends (`gateway.approvals.model`): `executed` with any upstream answer; `not_sent`
when a rule stopped it or the upstream could not be connected to (it did not run, and
nothing of it stays reserved); `failed` when it was sent and no answer came (it may have
run; it keeps its reservation). Each end is counted in `toolgate_approved_calls_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from prometheus_client import Counter

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.approvals.notify import Notifier
from gateway.audit import records
from gateway.audit.log import AuditLog
from gateway.bundle import BundleRef
from gateway.core.clock import Clock
from gateway.core.errors import (
    AuditUnavailable,
    BudgetExceeded,
    GatewayError,
    ReasonCode,
    UpstreamUnreachable,
)
from gateway.state.budgets import BudgetSettings, Reservation, reservation
from gateway.state.killswitch import KillSwitches
from gateway.store.base import StateStore
from gateway.upstreams.client import Upstreams

log = logging.getLogger("toolgate")
APPROVED = frozenset({ApprovalStatus.APPROVED})
EXECUTING = frozenset({ApprovalStatus.EXECUTING})
FINISH_ATTEMPTS = 12  # about 40 s of retries
# At shutdown, after the drain window: the rest of the pod's grace period, no more.
CLOSE_WAIT_S = 5


class Executor:
    def __init__(self, *, store: StateStore, upstreams: Upstreams, audit: AuditLog,
                 bundles: BundleRef, kills: KillSwitches, budgets: BudgetSettings,
                 notifier: Notifier, instance: str, clock: Clock,
                 outcomes: Counter | None = None) -> None:
        self._store = store
        self._upstreams = upstreams
        self._audit = audit
        self._bundles = bundles
        self._kills = kills
        self._budgets = budgets
        self._notifier = notifier
        self.instance = instance   # who is sending a call (the store's `owner`)
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._outcomes = outcomes  # toolgate_approved_calls_total{tool, status, code}

    def counted(self, approval: Approval) -> None:
        """A held call reached its end (`approval.status`): count it."""
        if self._outcomes is not None:
            self._outcomes.labels(approval.tool, str(approval.status),
                                  approval.error or "").inc()

    def record(self, event: str, approval: Approval, **fields: Any) -> None:
        """An `approval` audit record; raises on sink failure (used write-ahead)."""
        self._audit.write("approval", records.approval(event, approval, **fields))

    def start(self, approval_id: str) -> asyncio.Task[None]:
        """Run the approved call in a task of the executor's own (not the approver's
        request's), so an approver hanging up cannot cancel a call half-sent."""
        return self._spawn(approval_id, self._execute(approval_id))

    def resend(self, approval: Approval) -> asyncio.Task[None]:
        """Take over a call an instance that stopped left `executing`, and send it again."""
        return self._spawn(approval.id, self._take_over(approval))

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
                approval_id, APPROVED, ApprovalStatus.EXECUTING, self._clock.time(),
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

    async def _take_over(self, approval: Approval) -> None:
        try:
            again = await self._store.transition(
                approval.id, EXECUTING, ApprovalStatus.EXECUTING, self._clock.time(),
                owner_is=(approval.owner,), attempts=approval.attempts + 1,
                owner=self.instance,
                record=lambda after: self.record("resending", after, attempt=after.attempts,
                                                 owner=self.instance,
                                                 abandoned_by=approval.owner))
            if again is not None:
                await self._send(again, resent=True)
        except GatewayError as exc:
            log.warning("approval %s not taken over: %s", approval.id, exc.message)

    async def _send(self, approval: Approval, *, resent: bool = False) -> None:
        """Send a claimed call, or end it `not_sent` when a rule stops it first. Each rule's
        refusal is the code the agent is answered with (`error`). `resent`: an instance
        that stopped may have sent it already (`_not_sent`)."""
        spec = self._bundles.current.tools.get(approval.tool)
        if spec is None or not self._upstreams.knows(approval.plan.upstream):
            # Removing a tool (or its upstream) from the config revokes its held calls.
            await self._not_sent(approval, ReasonCode.TOOL_NOT_ALLOWED,
                                 "the tool or its upstream is no longer configured", resent)
            return
        if approval.plan.digest() != approval.call_digest:
            await self._not_sent(approval, ReasonCode.INTERNAL_ERROR,
                                 "the stored call failed its integrity check", resent)
            return
        killed = self._kills.refusal(approval.tenant, approval.principal.get("agent"),
                                     approval.tool)
        if killed is not None:
            await self._not_sent(approval, killed.code, killed.message, resent)
            return
        # An approved call still counts against its run's budget, reserved now.
        reserved = reservation(self._budgets, approval.tenant, approval.run_id, approval.tool,
                               approval.spend)
        if reserved is not None:
            try:
                await self._store.commit_forward(None, reserved, self._clock.time())
            except BudgetExceeded as exc:
                await self._not_sent(approval, exc.code, exc.message, resent)
                return
            except GatewayError:
                await self._hand_back(approval)
                raise
        start = self._clock.monotonic()
        try:
            resp = await self._upstreams.send(approval.plan, spec.timeout_ms)
        except GatewayError as exc:
            latency_ms = round((self._clock.monotonic() - start) * 1000, 3)
            if isinstance(exc, UpstreamUnreachable):
                # Only a call that never left the gateway is known not to have run: it gives
                # its reservation back. A timeout or a broken answer keeps it (DESIGN §6).
                await self._give_back(reserved)
                await self._not_sent(approval, exc.code, exc.message, resent,
                                     latency_ms=latency_ms)
                return
            await self._finish(approval, ApprovalStatus.FAILED, reason=exc.message,
                               error=str(exc.code), sent=True, latency_ms=latency_ms)
            return
        await self._finish(approval, ApprovalStatus.EXECUTED, upstream_status=resp.status,
                           sent=True,
                           result_status=resp.status, result_body=resp.body,
                           result_content_type=resp.headers.get("Content-Type"),
                           latency_ms=round(resp.latency_ms, 3))

    async def _not_sent(self, approval: Approval, code: ReasonCode, why: str, resent: bool,
                        latency_ms: float | None = None) -> None:
        """End a call this attempt did not send: `not_sent`, answered with `code` — nothing
        of it is reserved any more (it was refused before the reservation, or given back).
        But a call taken over from an instance that stopped (`resent`) may have reached the
        upstream the first time: it is not known not to have run, so `outcome_unknown`."""
        if resent:
            await self._finish(approval, ApprovalStatus.OUTCOME_UNKNOWN, error=str(code),
                               reason=f"not sent again: {why}; the gateway that stopped may "
                                      "have sent it: check the upstream and resolve it by hand",
                               latency_ms=latency_ms)
            return
        await self._finish(approval, ApprovalStatus.NOT_SENT, error=str(code),
                           reason=f"not sent: {why}", latency_ms=latency_ms)

    async def _hand_back(self, approval: Approval) -> None:
        """The store failed before anything was sent: hand the call back (approved) for the
        sweeper to try again, rather than leave it looking half-sent — retried, since the
        store that just failed may fail again. If it never succeeds, a restart finds the
        call `executing` and makes it `outcome_unknown`: fail closed."""
        delay = 0.1
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                await self._store.transition(approval.id, EXECUTING, ApprovalStatus.APPROVED,
                                             self._clock.time(), owner_is=(self.instance,),
                                             owner=None)
                return
            except GatewayError as exc:
                log.warning("handing approval %s back failed (%d/%d): %s", approval.id,
                            attempt, FINISH_ATTEMPTS, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.critical("approval %s could not be handed back; it stays executing, unsent",
                     approval.id)

    async def _give_back(self, reserved: Reservation | None) -> None:
        """Uncount a call that was never sent: neither its spend nor the call counts."""
        if reserved is None:
            return
        try:
            await self._store.undo_forward(None, reserved, self._clock.time())
        except GatewayError as exc:
            log.warning("spend of run %s not given back: %s", reserved.run_id, exc.message)

    def _record_outcome(self, approval: Approval, **fields: Any) -> None:
        """After the upstream acted, a lost record must not undo the result."""
        try:
            self._audit.write("outcome", records.approval_outcome(approval, **fields))
        except AuditUnavailable:
            log.critical("outcome record for approval %s lost", approval.id)

    async def _finish(self, approval: Approval, status: ApprovalStatus, *,
                      reason: str | None = None, error: str | None = None,
                      upstream_status: int | None = None, latency_ms: float | None = None,
                      sent: bool = False, **result: Any) -> None:
        """`sent`: whether the request may have reached the upstream (false only when it is
        known never to have left the gateway)."""
        def record(after: Approval) -> None:
            self._record_outcome(after, status=str(status), error=error,
                                 upstream_status=upstream_status, reason=reason,
                                 latency_ms=latency_ms, sent=sent)

        # The upstream has answered: its result must not be lost to a passing store error
        # (the call would then look unfinished and could be sent again after a restart).
        # Only the owner may finish it: if another replica took the call over meanwhile,
        # its own attempt decides, and this one is recorded but not stored.
        delay = 0.1
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                done = await self._store.transition(approval.id, EXECUTING, status,
                                                    self._clock.time(), record=record,
                                                    owner_is=(self.instance,),
                                                    reason=reason, error=error, **result)
            except GatewayError as exc:
                log.warning("storing the result of approval %s failed (%d/%d): %s",
                            approval.id, attempt, FINISH_ATTEMPTS, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if done is not None:
                self.counted(done)
                self._notifier.notify(str(status), done)
            else:
                self._record_outcome(approval, status=str(status), error=error,
                                     upstream_status=upstream_status, reason=reason,
                                     latency_ms=latency_ms, stored=False)
                log.critical("approval %s was taken over by another gateway while this one "
                             "sent it; its answer (%s) is only in the audit log",
                             approval.id, upstream_status)
            return
        log.critical("the result of approval %s (%s) could not be stored; it stays "
                     "executing", approval.id, status)

    async def close(self) -> None:
        """Let calls already sent finish and record their results, for `CLOSE_WAIT_S`; then
        cancel what is left. A call cut there stays `executing`, and the takeover of a
        later start treats it as a crash would (resent with its key, or `outcome_unknown`):
        it is never executed twice silently."""
        if self._running:
            running = list(self._running.values())
            await asyncio.wait(running, timeout=CLOSE_WAIT_S)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
