"""The approval sweeper: one background task per gateway instance.

Every `approvals.sweep_interval_ms` it
- heartbeats, so other instances know this one still owns the calls it is sending;
- settles calls left `executing` by an instance that stopped (no heartbeat for
  `approvals.takeover_after_ms`, on this replica or another): a call with an
  Idempotency-Key the upstream dedups on is sent again; any other becomes
  `outcome_unknown` for a person to resolve — never a silent second execution. A call a
  live instance is still sending is never taken over;
- expires pending calls past their TTL (fail closed);
- starts approved calls nobody is sending yet (an approval answered before a crash).

Once the gateway is stopping (`drain`, from `gateway.listener.drain`) it starts no call and
takes none over — the drain could cut it mid-send — and leaves them to another replica or
to the next start; it still heartbeats, so the calls this instance is sending are not taken
over while they finish, and still expires pending calls (that sends nothing).
"""

from __future__ import annotations

import asyncio
import logging

from gateway import tasks
from gateway.approvals.executor import EXECUTING, Executor
from gateway.approvals.model import Approval, ApprovalStatus
from gateway.approvals.service import ApprovalService
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.store.base import StateStore

log = logging.getLogger("toolgate")
APPROVED = frozenset({ApprovalStatus.APPROVED})


class Sweeper:
    def __init__(self, *, store: StateStore, service: ApprovalService, executor: Executor,
                 interval_s: float, takeover_after_s: float, clock: Clock) -> None:
        self._store = store
        self._service = service
        self._executor = executor
        self._interval = interval_s
        self._takeover_after = takeover_after_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    def drain(self) -> None:
        """The gateway is stopping: from now on start no call and take none over."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def recover(self) -> None:
        """Settle calls abandoned mid-send by an instance that stopped."""
        if self._draining:
            return
        for approval in await self._store.abandoned(self._clock.time(), self._takeover_after):
            if self._draining:   # it began while the store was asked
                return
            if approval.resend_safe:
                # The upstream gets the same Idempotency-Key again and dedups on it.
                self._executor.resend(approval)
            else:
                await self._unknown(approval)

    async def _unknown(self, approval: Approval) -> None:
        unknown = await self._store.transition(
            approval.id, EXECUTING, ApprovalStatus.OUTCOME_UNKNOWN, self._clock.time(),
            owner_is=(approval.owner,),
            reason="the gateway stopped while this call was being sent, and its tool has no "
                   "idempotency key the upstream could dedup on, so it is not sent again; "
                   "check the upstream and resolve it by hand",
            record=lambda after: self._executor.record("outcome_unknown", after))
        if unknown is not None:
            self._executor.counted(unknown)
            self._service.notifier.notify("outcome_unknown", unknown)

    async def sweep_once(self) -> None:
        await self._service.expire_due()
        if self._draining:
            return
        for approval in await self._store.in_states(APPROVED):
            if self._draining:   # it began while the store was asked
                return
            self._executor.start(approval.id)

    async def _run(self) -> None:
        while True:
            try:
                await self._store.heartbeat(self._executor.instance, self._clock.time())
                await self.recover()
                await self.sweep_once()
            except GatewayError as exc:
                log.warning("approval sweep failed: %s", exc.message)
            await asyncio.sleep(self._interval)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="approval sweeper")

    async def close(self) -> None:
        await tasks.stop(self._task)
