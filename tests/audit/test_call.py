"""CallAudit: exactly one decision record per call, and an outcome once an action started,
on every exit path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.call import CallAudit
from gateway.audit.log import AuditLog
from gateway.config import AuditSettings
from gateway.core.errors import AuditUnavailable
from tests.audit.conftest import Boom, read_records


@pytest.fixture
def broken_log(tmp_path: Path) -> Iterator[AuditLog]:
    """A log whose file became a directory after it started: every write fails."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSettings(file=path))
    path.unlink()
    path.mkdir()
    yield log
    path.rmdir()
    log.close()


async def test_exception_before_decision_writes_one_deny_record(audit_log: AuditLog,
                                                                audit_path: Path) -> None:
    with pytest.raises(Boom):
        async with CallAudit(audit_log, "req-1", None):
            raise Boom
    (record,) = read_records(audit_path)
    assert record["kind"] == "decision"
    assert record["decision_id"] == "req-1"
    assert record["action"] == "deny"
    assert record["stage"] == "internal"
    assert record["reasons"] == ["internal_error"]


async def test_exception_after_decision_and_expect_outcome_writes_one_outcome(
        audit_log: AuditLog, audit_path: Path) -> None:
    async def call() -> None:
        async with CallAudit(audit_log, "req-2", None) as audit:
            audit.decision({"action": "allow", "stage": "policy", "reasons": ["green_tier: ok"]})
            audit.expect_outcome()
            raise Boom

    with pytest.raises(Boom):
        await call()
    decision, outcome = read_records(audit_path)
    assert decision["kind"] == "decision"
    assert decision["action"] == "allow"
    assert outcome["kind"] == "outcome"
    assert outcome["decision_id"] == "req-2"
    assert outcome["error"] == "internal_error"


async def test_exception_after_decision_without_action_writes_nothing_more(
        audit_log: AuditLog, audit_path: Path) -> None:
    async def call() -> None:
        async with CallAudit(audit_log, "req-3", None) as audit:
            audit.decision({"action": "deny", "stage": "scopes", "reasons": ["insufficient_scope"]})
            raise Boom

    with pytest.raises(Boom):
        await call()
    assert [r["kind"] for r in read_records(audit_path)] == ["decision"]


async def test_normal_path_writes_nothing_extra(audit_log: AuditLog, audit_path: Path) -> None:
    async with CallAudit(audit_log, "req-4", None) as audit:
        audit.decision({"action": "allow", "stage": "policy", "reasons": ["green_tier: ok"]})
        audit.expect_outcome()
        audit.outcome({"upstream_status": 200})
    async with CallAudit(audit_log, "req-5", None) as audit:
        audit.decision({"action": "deny", "stage": "policy", "reasons": ["red_tier: no"]})
    records = read_records(audit_path)
    assert [(r["kind"], r["decision_id"]) for r in records] == [
        ("decision", "req-4"), ("outcome", "req-4"), ("decision", "req-5")]
    assert records[1]["upstream_status"] == 200
    assert "error" not in records[1]


async def test_exit_without_decision_still_writes_one(audit_log: AuditLog,
                                                      audit_path: Path) -> None:
    async with CallAudit(audit_log, "req-6", None):
        pass
    (record,) = read_records(audit_path)
    assert (record["kind"], record["action"], record["stage"]) == ("decision", "deny",
                                                                   "internal")


async def test_owed_outcome_written_on_clean_exit(audit_log: AuditLog,
                                                  audit_path: Path) -> None:
    async with CallAudit(audit_log, "req-7", None) as audit:
        audit.decision({"action": "allow", "stage": "policy", "reasons": []})
        audit.expect_outcome()
    records = read_records(audit_path)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    assert records[1]["error"] == "internal_error"


async def test_cancellation_writes_one_cancelled_record(audit_log: AuditLog,
                                                        audit_path: Path) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with CallAudit(audit_log, "req-8", None):
            raise asyncio.CancelledError
    (record,) = read_records(audit_path)
    assert record["kind"] == "decision"
    assert record["action"] == "deny"
    assert record["reasons"] == ["cancelled"]


async def test_cancelled_task_writes_one_outcome(audit_log: AuditLog, audit_path: Path) -> None:
    started = asyncio.Event()

    async def call() -> None:
        async with CallAudit(audit_log, "req-9", None) as audit:
            audit.decision({"action": "allow", "stage": "policy", "reasons": []})
            audit.expect_outcome()
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = read_records(audit_path)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    assert records[1]["error"] == "cancelled"


async def test_decision_raises_when_sink_is_down(broken_log: AuditLog) -> None:
    async with CallAudit(broken_log, "req-10", None) as audit:
        with pytest.raises(AuditUnavailable):
            audit.decision({"action": "allow", "stage": "policy", "reasons": []})


async def test_sink_down_does_not_mask_the_original_exception(broken_log: AuditLog) -> None:
    with pytest.raises(Boom):
        async with CallAudit(broken_log, "req-11", None):
            raise Boom


async def test_base_fields_in_every_record(audit_log: AuditLog, audit_path: Path) -> None:
    async with CallAudit(audit_log, "req-12", "t" * 32, "rev-1", "echo_post") as audit:
        audit.decision({"action": "allow", "stage": "policy", "reasons": []})
        audit.expect_outcome()
        audit.outcome({"upstream_status": 204})
    records = read_records(audit_path)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    for record in records:
        assert record["decision_id"] == "req-12"
        assert record["trace_id"] == "t" * 32
        assert record["policy_revision"] == "rev-1"
        assert record["tool"] == "echo_post", "a report joins an outcome to its tool"


async def test_no_tool_is_named_before_one_is_known(audit_log: AuditLog,
                                                    audit_path: Path) -> None:
    """Refused before a tool was found: no `tool` is made up; an owed outcome still gets
    the one the call named."""
    async with CallAudit(audit_log, "req-13", None):
        pass
    async with CallAudit(audit_log, "req-14", None, tool="echo_post") as audit:
        audit.decision({"action": "allow", "stage": "policy", "reasons": []})
        audit.expect_outcome()
    first, decision, outcome = read_records(audit_path)
    assert "tool" not in first
    assert (decision["tool"], outcome["tool"], outcome["error"]) == (
        "echo_post", "echo_post", "internal_error")


async def test_outcome_write_failure_does_not_raise(broken_log: AuditLog) -> None:
    """The action already happened: a lost outcome record is logged, never turned into an
    error that would tell the agent nothing was done."""
    audit = CallAudit(broken_log, "req-12", None)
    audit.expect_outcome()
    audit.outcome({"status": 201})  # must not raise


async def test_file_and_stdout_get_identical_bytes(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(AuditSettings(file=path, stdout=True))
    try:
        log.write("decision", {"decision_id": "same"})
    finally:
        log.close()
    assert capfd.readouterr().out == path.read_text()


async def test_a_decision_that_cannot_be_rendered_still_leaves_one_record(
        audit_log: AuditLog, audit_path: Path) -> None:
    """A gateway bug (a value JSON cannot hold) is a 500, never a call without a record."""
    with pytest.raises(TypeError):
        async with CallAudit(audit_log, "req-9", None) as audit:
            audit.decision({"action": "allow", "stage": "policy", "args": {"a": "\ud800"}})
    (record,) = read_records(audit_path)
    assert (record["decision_id"], record["stage"], record["reasons"]) == (
        "req-9", "internal", ["internal_error"])
