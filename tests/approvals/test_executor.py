"""The executor sends an approved call once, as stored — and applies the pipeline's own
kill-switch and budget rules first. A call it does not send ends `not_sent`, answered with
the rule's own code, recorded `sent: false` and counted; one sent without an answer ends
`failed`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.bundle import load_bundle
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from gateway.state.budgets import Limits, Reservation
from gateway.state.killswitch import KillSwitch
from gateway.store.sqlite import SqliteStore
from tests.approvals.test_service import QUIET, held_call
from tests.support import FakeClock, Recorder, records, runtime

APPROVED = frozenset({ApprovalStatus.PENDING})


@pytest.fixture
async def quiet(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(tmp_path, dev_key, recorder[1], clock, approvals=QUIET,
                       budgets={"max_tool_calls": 1}) as rt:
        yield rt


async def approved(rt: Runtime, token: str, key: str, **headers: str) -> Approval:
    """A held call moved to approved (as the vote would), not yet started."""
    approval_id = await held_call(rt, token, key, "/echo/slow-refunds",
                                  {"tenant_id": "acme", "amount": 5})
    moved = await rt.store.transition(approval_id, APPROVED, ApprovalStatus.APPROVED,
                                      rt.clock.time())
    assert moved is not None
    return moved


async def finished(rt: Runtime, approval: Approval) -> Approval:
    await rt.approvals.executor.start(approval.id)
    done = await rt.store.get_approval(approval.id)
    assert done is not None
    return done


async def test_concurrent_starts_send_once(quiet: Runtime, agent_token: str,
                                           recorder: tuple[Recorder, str]) -> None:
    approval = await approved(quiet, agent_token, "x-1")
    executor = quiet.approvals.executor
    recorder[0].release.set()
    await asyncio.gather(*(executor.start(approval.id) for _ in range(5)))
    done = await quiet.store.get_approval(approval.id)
    assert done is not None
    assert (done.status, done.attempts) == (ApprovalStatus.EXECUTED, 1)
    assert len(recorder[0].seen) == 1
    assert recorder[0].bodies[0] == approval.plan.body


async def test_a_kill_switch_stops_an_approved_call(quiet: Runtime, agent_token: str,
                                                    recorder: tuple[Recorder, str]) -> None:
    approval = await approved(quiet, agent_token, "x-2")
    quiet.kills.remember(KillSwitch("tool:slow_refund", "incident", {}, 0.0),
                         "tool:slow_refund")
    done = await finished(quiet, approval)
    assert (done.status, done.error) == (ApprovalStatus.NOT_SENT, "killed")
    assert recorder[0].seen == []
    unsent(quiet, done, "killed")


async def test_a_call_taken_over_and_then_stopped_is_not_known_not_to_have_run(
        quiet: Runtime, agent_token: str, recorder: tuple[Recorder, str]) -> None:
    """A call an instance that stopped was sending may have reached the upstream: if its
    resend is stopped, the call is `outcome_unknown`, never `not_sent`."""
    approval = await approved(quiet, agent_token, "x-taken")
    abandoned = await quiet.store.transition(approval.id, frozenset({ApprovalStatus.APPROVED}),
                                             ApprovalStatus.EXECUTING, quiet.clock.time(),
                                             attempts=1, owner="gw-stopped")
    assert abandoned is not None
    quiet.kills.remember(KillSwitch("tool:slow_refund", "incident", {}, 0.0),
                         "tool:slow_refund")
    await quiet.approvals.executor.resend(abandoned)
    done = await quiet.store.get_approval(approval.id)
    assert done is not None
    assert (done.status, done.error) == (ApprovalStatus.OUTCOME_UNKNOWN, "killed")
    assert (done.reason or "").startswith("not sent again: ")
    assert recorder[0].seen == []
    assert counted(quiet, done.tool, "outcome_unknown", "killed") == 1


async def test_a_tampered_call_is_never_sent(quiet: Runtime, agent_token: str,
                                             recorder: tuple[Recorder, str]) -> None:
    approval = await approved(quiet, agent_token, "x-3")
    store = quiet.store
    assert isinstance(store, SqliteStore)
    # Someone with access to the database edits the stored body after approval.
    await store._db.write(lambda conn: conn.execute(
        "UPDATE approvals SET body = ? WHERE id = ?", (b'{"amount": 5000}', approval.id)))
    done = await finished(quiet, approval)
    assert (done.status, done.error) == (ApprovalStatus.NOT_SENT, "internal_error")
    assert "integrity" in (done.reason or "")
    assert recorder[0].seen == []
    unsent(quiet, done, "internal_error")


async def test_a_call_of_a_tool_no_longer_configured_is_not_sent(
        quiet: Runtime, agent_token: str, recorder: tuple[Recorder, str],
        clock: FakeClock) -> None:
    """A reload that removes a tool revokes its held calls."""
    approval = await approved(quiet, agent_token, "x-gone")
    without = dataclasses.replace(quiet.settings, tool_specs=tuple(
        p for p in quiet.settings.tool_specs if p.name != "specs_approvals"))
    quiet.bundles.swap(load_bundle(without, clock))
    done = await finished(quiet, approval)
    assert (done.status, done.error) == (ApprovalStatus.NOT_SENT, "tool_not_allowed")
    assert recorder[0].seen == []
    unsent(quiet, done, "tool_not_allowed")


async def test_an_approved_call_still_counts_against_its_run(
        quiet: Runtime, dev_key: DevKey, recorder: tuple[Recorder, str]) -> None:
    token = dev_key.token("svc-agent", tenant="acme", scopes=["billing:refund"],
                          run_id="run-x")
    # The run already made its one call.
    await quiet.store.commit_forward(None, Reservation("acme", "run-x", "t", {},
                                                       Limits(max_tool_calls=1)),
                                     quiet.clock.time())
    approval = await approved(quiet, token, "x-4")
    done = await finished(quiet, approval)
    assert (done.status, done.error) == (ApprovalStatus.NOT_SENT, "budget_exceeded")
    assert recorder[0].seen == []
    unsent(quiet, done, "budget_exceeded")
    # The refused reservation took nothing: the run still has exactly its one call.
    assert (await quiet.store.usage("acme", "run-x")).tool_calls == 1


def unsent(rt: Runtime, done: Approval, code: str) -> None:
    """A call that was not sent: its outcome record says so, and it is counted."""
    [outcome] = [r for r in records(rt) if r["kind"] == "outcome"
                 and r["approval_id"] == done.id]
    assert (outcome["status"], outcome["error"], outcome["sent"]) == ("not_sent", code, False)
    assert outcome["reason"].startswith("not sent: ")
    assert counted(rt, done.tool, "not_sent", code) == 1


def counted(rt: Runtime, tool: str, status: str, code: str) -> float:
    value = rt.metrics.registry.get_sample_value(
        "toolgate_approved_calls_total", {"tool": tool, "status": status, "code": code})
    return value or 0.0


# ---- an approved call's spend (THREAT_MODEL D7, the executor's half) ----------------------

# Yellow tools with a spend and no limit in the policy data, so every call is held. Each
# reaches its upstream differently: an answer of 502 or 504, no answer within the tool's
# timeout, or no connection at all (the `down` upstream: nothing listens there).
SPEND_TOOLS = [
    {"name": f"held_spend_{name}", "upstream": upstream,
     "route": {"method": "POST", "path": f"/held-spend/{name}"},
     "forward": {"path": path}, "scopes": ["billing:refund"], "tier": "yellow",
     "idempotency": "none", "spend": "amount", "timeout_ms": 200,
     "input_schema": {"type": "object", "required": ["amount"],
                      "properties": {"amount": {"type": "number", "minimum": 0}}}}
    for name, upstream, path in (("502", "echo", "/v1/status/502"),
                                 ("504", "echo", "/v1/status/504"),
                                 ("timeout", "echo", "/v1/hang"),
                                 ("unreachable", "down", "/v1/items"))]


@pytest.mark.parametrize(("name", "status", "error", "kept"), [
    ("502", ApprovalStatus.EXECUTED, None, True),
    ("504", ApprovalStatus.EXECUTED, None, True),
    ("timeout", ApprovalStatus.FAILED, "upstream_timeout", True),
    ("unreachable", ApprovalStatus.NOT_SENT, "upstream_error", False)])
async def test_an_approved_call_keeps_its_spend_unless_it_never_left(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        name: str, status: ApprovalStatus, error: str | None, kept: bool) -> None:
    """A call that reached its upstream may have run there, whatever came back: it keeps
    its call and its spend. Only one that could not be connected to gives them back."""
    upstream_reached = name != "unreachable"
    specs = tmp_path / "held_spend.yaml"
    specs.write_text(yaml.safe_dump(SPEND_TOOLS), encoding="utf-8")
    token = dev_key.token("svc-agent", tenant="acme", scopes=["billing:refund"],
                          run_id="run-held")
    async with runtime(tmp_path / "gateway", dev_key, recorder[1], clock, approvals=QUIET,
                       tool_specs=[str(specs)],
                       budgets={"max_spend": {"amount": 100}}) as rt:
        approval_id = await held_call(rt, token, f"k-{name}", f"/held-spend/{name}",
                                      {"amount": 30})
        moved = await rt.store.transition(approval_id, APPROVED, ApprovalStatus.APPROVED,
                                          rt.clock.time())
        assert moved is not None
        assert (await rt.store.usage("acme", "run-held")).tool_calls == 0, \
            "a held call reserves nothing until it is executed"
        done = await finished(rt, moved)
        assert (done.status, done.error) == (status, error)
        assert len(recorder[0].seen) == (1 if upstream_reached else 0)
        usage = await rt.store.usage("acme", "run-held")
        if kept:
            assert (usage.tool_calls, usage.spent) == (1, {"amount": 30.0})
        else:
            assert (usage.tool_calls, usage.spent.get("amount", 0)) == (0, 0)
            assert (done.reason or "").startswith("not sent:")
        [outcome] = [r for r in records(rt) if r["kind"] == "outcome"]
        assert (outcome["status"], outcome["sent"]) == (str(status), upstream_reached)
        assert counted(rt, done.tool, str(status), error or "") == 1
