"""The executor sends an approved call once, as stored — and applies the pipeline's own
kill-switch and budget rules first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from gateway.state.budgets import Limits, Reservation
from gateway.state.killswitch import KillSwitch
from gateway.store.sqlite import SqliteStore
from tests.approvals.test_service import QUIET, held_call
from tests.support import FakeClock, Recorder, runtime

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
    assert (done.status, done.error) == (ApprovalStatus.FAILED, "killed")
    assert recorder[0].seen == []


async def test_a_tampered_call_is_never_sent(quiet: Runtime, agent_token: str,
                                             recorder: tuple[Recorder, str]) -> None:
    approval = await approved(quiet, agent_token, "x-3")
    store = quiet.store
    assert isinstance(store, SqliteStore)
    # Someone with access to the database edits the stored body after approval.
    await store._db.write(lambda conn: conn.execute(
        "UPDATE approvals SET body = ? WHERE id = ?", (b'{"amount": 5000}', approval.id)))
    done = await finished(quiet, approval)
    assert done.status is ApprovalStatus.FAILED
    assert "integrity" in (done.reason or "")
    assert recorder[0].seen == []


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
    assert (done.status, done.error) == (ApprovalStatus.FAILED, "budget_exceeded")
    assert recorder[0].seen == []


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
    ("unreachable", ApprovalStatus.FAILED, "upstream_error", False)])
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
