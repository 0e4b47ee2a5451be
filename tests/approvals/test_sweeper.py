"""The sweeper: expiry, and calls an instance left mid-send — resent only when the upstream
can dedup them, never while their sender is alive. Time is the injected clock's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.approvals.executor import Executor
from gateway.approvals.model import Approval, ApprovalStatus
from gateway.approvals.sweeper import Sweeper
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.approvals.test_service import QUIET, held_call
from tests.support import FakeClock, Recorder, records, runtime

TAKEOVER_S = 10.0


@pytest.fixture
async def quiet(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(tmp_path, dev_key, recorder[1], clock, approvals=QUIET) as rt:
        yield rt


def sweeper(rt: Runtime, clock: FakeClock) -> Sweeper:
    return Sweeper(store=rt.store, service=rt.approvals, executor=rt.approvals.executor,
                   interval_s=1.0, takeover_after_s=TAKEOVER_S, clock=clock)


async def left_executing(rt: Runtime, token: str, path: str, key: str, owner: str) -> str:
    approval_id = await held_call(rt, token, key, path, {"tenant_id": "acme", "amount": 5})
    moved = await rt.store.transition(approval_id, frozenset({ApprovalStatus.PENDING}),
                                      ApprovalStatus.EXECUTING, rt.clock.time(), owner=owner,
                                      attempts=1)
    assert moved is not None
    return approval_id


async def status(rt: Runtime, approval_id: str) -> ApprovalStatus:
    approval = await rt.store.get_approval(approval_id)
    assert approval is not None
    return approval.status


async def test_a_live_sender_is_never_taken_over(quiet: Runtime, agent_token: str,
                                                 clock: FakeClock,
                                                 recorder: tuple[Recorder, str]) -> None:
    approval_id = await left_executing(quiet, agent_token, "/echo/slow-refunds", "k-1",
                                       "gw-live")
    await quiet.store.heartbeat("gw-live", clock.now)
    clock.advance(TAKEOVER_S - 1)
    await sweeper(quiet, clock).recover()
    assert await status(quiet, approval_id) is ApprovalStatus.EXECUTING
    assert recorder[0].seen == []


async def test_an_abandoned_call_with_a_key_is_resent_once(
        quiet: Runtime, agent_token: str, clock: FakeClock,
        recorder: tuple[Recorder, str]) -> None:
    approval_id = await left_executing(quiet, agent_token, "/echo/slow-refunds", "k-2",
                                       "gw-dead")
    await quiet.store.heartbeat("gw-dead", clock.now)
    clock.advance(TAKEOVER_S + 1)
    await sweeper(quiet, clock).recover()
    await quiet.approvals.executor.start(approval_id)  # joins the resend task
    assert await status(quiet, approval_id) is ApprovalStatus.EXECUTED
    [sent] = recorder[0].seen
    assert sent.headers["Idempotency-Key"] == "k-2"  # the upstream can dedup it
    resending = [r for r in records(quiet) if r.get("event") == "resending"]
    assert resending[0]["abandoned_by"] == "gw-dead"


async def test_an_abandoned_call_without_a_key_is_outcome_unknown(
        quiet: Runtime, dev_key: DevKey, clock: FakeClock,
        recorder: tuple[Recorder, str]) -> None:
    token = dev_key.token("svc-agent", tenant="acme", scopes=["support:write"])
    approval_id = await left_executing(quiet, token, "/echo/slow-notes", "unused", "gw-dead")
    clock.advance(TAKEOVER_S + 1)
    await sweeper(quiet, clock).recover()
    assert await status(quiet, approval_id) is ApprovalStatus.OUTCOME_UNKNOWN
    assert recorder[0].seen == [], "never executed a second time silently"


async def test_pending_calls_expire(quiet: Runtime, agent_token: str,
                                    clock: FakeClock) -> None:
    approval_id = await held_call(quiet, agent_token, "k-3")
    await sweeper(quiet, clock).sweep_once()
    assert await status(quiet, approval_id) is ApprovalStatus.PENDING
    clock.advance(3601)
    await sweeper(quiet, clock).sweep_once()
    assert await status(quiet, approval_id) is ApprovalStatus.EXPIRED
    assert [r["event"] for r in records(quiet) if r.get("event") == "expired"] == ["expired"]



class Started:
    """The runtime's executor, noting the tasks the sweeper starts (to wait for them)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, approval_id: str) -> asyncio.Task[None]:
        self.tasks.append(self.executor.start(approval_id))
        return self.tasks[-1]

    def resend(self, approval: Approval) -> asyncio.Task[None]:
        self.tasks.append(self.executor.resend(approval))
        return self.tasks[-1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)


async def test_once_draining_it_starts_and_takes_over_no_call_but_still_expires(
        quiet: Runtime, agent_token: str, clock: FakeClock,
        recorder: tuple[Recorder, str]) -> None:
    """The gateway is stopping (`gateway.listener.drain`): a call it started now could be
    cut mid-send, so an approved call and an abandoned one are left for another replica or
    the next start. Expiry sends nothing: it goes on. The same sweep, not draining, sends
    both (the control)."""
    # Only the sweepers under test act: the runtime's own makes its first pass at start,
    # and could start the approved call below before they do.
    await quiet.sweeper.close()
    approved = await held_call(quiet, agent_token, "k-4")
    assert await quiet.store.transition(approved, frozenset({ApprovalStatus.PENDING}),
                                        ApprovalStatus.APPROVED, clock.now) is not None
    abandoned = await left_executing(quiet, agent_token, "/echo/slow-refunds", "k-5",
                                     "gw-dead")
    clock.advance(TAKEOVER_S + 1)
    pending = await held_call(quiet, agent_token, "k-6")
    started = Started(quiet.approvals.executor)

    def sweeper_of(executor: Started) -> Sweeper:
        return Sweeper(store=quiet.store, service=quiet.approvals,
                       executor=cast(Executor, executor), interval_s=1.0,
                       takeover_after_s=TAKEOVER_S, clock=clock)

    stopping = sweeper_of(started)
    stopping.drain()
    assert stopping.draining
    clock.advance(3601)
    await stopping.recover()
    await stopping.sweep_once()
    assert started.tasks == []
    assert await status(quiet, approved) is ApprovalStatus.APPROVED
    assert await status(quiet, abandoned) is ApprovalStatus.EXECUTING
    assert await status(quiet, pending) is ApprovalStatus.EXPIRED, "expiry goes on"
    assert recorder[0].seen == []

    running = sweeper_of(started)
    assert not running.draining
    await running.recover()
    await running.sweep_once()
    await asyncio.gather(*started.tasks)
    assert len(started.tasks) == 2
    for approval_id in (approved, abandoned):
        assert await status(quiet, approval_id) is ApprovalStatus.EXECUTED
    assert len(recorder[0].seen) == 2
