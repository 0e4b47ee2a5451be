"""The audit log: JSON lines in a real file, redaction, trace ids, and `CallAudit`'s
guarantee of exactly one decision record (plus an outcome record when one is owed)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.log import REDACTED, AuditLog, CallAudit, redact, trace_id
from gateway.config import AuditSettings
from gateway.core.errors import AuditUnavailable


class Boom(Exception):
    pass


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "toolgate.jsonl"


@pytest.fixture
def audit_log(audit_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(AuditSettings(file=audit_path))
    yield log
    log.close()


def _records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# ---- AuditLog --------------------------------------------------------------------------

def test_one_json_line_per_write_with_ts_and_kind_first(audit_log: AuditLog,
                                                         audit_path: Path) -> None:
    audit_log.write("decision", {"decision_id": "req-1", "action": "allow",
                                 "reasons": ["green_tier: ok"], "args": {"a": 1}})
    audit_log.write("outcome", {"decision_id": "req-1", "upstream_status": 201})
    text = audit_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert text.count("\n") == 2
    first, second = _records(audit_path)
    assert list(first)[:2] == ["ts", "kind"]
    assert list(second)[:2] == ["ts", "kind"]
    assert first["kind"] == "decision"
    assert second["kind"] == "outcome"
    assert first["decision_id"] == second["decision_id"] == "req-1"
    assert first["action"] == "allow"
    assert first["args"] == {"a": 1}
    assert second["upstream_status"] == 201
    assert first["ts"].endswith("Z")


def test_file_created_owner_only(audit_log: AuditLog, audit_path: Path) -> None:
    audit_log.write("decision", {"decision_id": "req-1"})
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
    assert audit_log.location == str(audit_path)


def test_appends_to_an_existing_file(audit_path: Path) -> None:
    audit_path.parent.mkdir(parents=True)
    audit_path.write_text('{"kind": "earlier"}\n', encoding="utf-8")
    log = AuditLog(AuditSettings(file=audit_path))
    try:
        log.write("decision", {"decision_id": "req-2"})
    finally:
        log.close()
    records = _records(audit_path)
    assert [r["kind"] for r in records] == ["earlier", "decision"]


def test_unwritable_sink_raises_audit_unavailable() -> None:
    log = AuditLog(AuditSettings(file=Path("/dev/full")))
    try:
        with pytest.raises(AuditUnavailable) as info:
            log.write("decision", {"decision_id": "req-1"})
    finally:
        log.close()
    assert info.value.status == 503
    assert str(info.value.code) == "audit_unavailable"
    assert isinstance(info.value.__cause__, OSError)


def test_stdout_sink(capfd: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(AuditSettings(file=None, stdout=True))
    try:
        log.write("decision", {"decision_id": "req-1", "action": "deny"})
    finally:
        log.close()
    assert log.location == "stdout"
    out = capfd.readouterr().out
    assert out.count("\n") == 1
    record = json.loads(out)
    assert list(record)[:2] == ["ts", "kind"]
    assert record["kind"] == "decision"
    assert record["action"] == "deny"


def test_file_and_stdout_get_the_same_record(audit_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(AuditSettings(file=audit_path, stdout=True))
    try:
        log.write("decision", {"decision_id": "req-1", "reasons": ["a: b"], "args": {"x": [1]}})
    finally:
        log.close()
    (in_file,) = _records(audit_path)
    in_stdout = json.loads(capfd.readouterr().out)
    # `ts` is stamped per sink; everything else is the same record.
    in_file.pop("ts")
    in_stdout.pop("ts")
    assert in_file == in_stdout
    assert in_file == {"kind": "decision", "decision_id": "req-1", "reasons": ["a: b"],
                       "args": {"x": [1]}}


def test_close_is_idempotent_and_does_not_close_stdout(audit_path: Path,
                                                       capfd: pytest.CaptureFixture[str],
                                                       ) -> None:
    log = AuditLog(AuditSettings(file=audit_path, stdout=True))
    log.close()
    log.close()
    print("stdout still open")
    assert "stdout still open" in capfd.readouterr().out


# ---- redact ------------------------------------------------------------------------------

def test_redact_top_level_and_nested() -> None:
    args = {"order_id": "o-1", "card": {"number": "4111", "exp": "12/30"}, "ssn": "123"}
    out = redact(args, ["/ssn", "/card/number"])
    assert out == {"order_id": "o-1", "card": {"number": REDACTED, "exp": "12/30"},
                   "ssn": REDACTED}


def test_redact_escaped_names() -> None:
    args = {"a/b": "slash", "c~d": "tilde", "e~1f": "literal", "keep": 1}
    out = redact(args, ["/a~1b", "/c~0d", "/e~01f"])
    assert out == {"a/b": REDACTED, "c~d": REDACTED, "e~1f": REDACTED, "keep": 1}


def test_redact_leaves_input_unmodified() -> None:
    args = {"card": {"number": "4111"}, "ssn": "123"}
    snapshot = json.loads(json.dumps(args))
    out = redact(args, ["/card/number", "/ssn"])
    assert args == snapshot
    assert out is not args
    assert out["card"] is not args["card"]


def test_redact_ignores_missing_pointers() -> None:
    args = {"card": {"number": "4111"}, "list": [1, 2], "s": "x"}
    out = redact(args, ["/nope", "/card/nope", "/nope/deeper", "/s/x", "/card/number/x"])
    assert out == args


def test_redact_without_pointers_returns_args() -> None:
    args = {"a": 1}
    assert redact(args, []) == {"a": 1}
    assert redact(None, ["/a"]) is None


def test_redact_redacts_whole_subtrees() -> None:
    out = redact({"card": {"number": "4111", "cvc": "123"}}, ["/card"])
    assert out == {"card": REDACTED}


def test_redact_array_elements() -> None:
    """JSON pointers index arrays (RFC 6901 §4): `/cards/0/number` is the first card's."""
    args = {"cards": [{"number": "4111"}, {"number": "5500"}], "tags": ["a", "secret"]}
    out = redact(args, ["/cards/0/number", "/tags/1", "/tags/2", "/cards/-/number"])
    assert out == {"cards": [{"number": REDACTED}, {"number": "5500"}],
                   "tags": ["a", REDACTED]}


def test_redact_wildcard_segment() -> None:
    args = {"items": [{"card": "4111", "sku": "a"}, {"card": "5500", "sku": "b"}],
            "by_name": {"x": {"ssn": "1"}, "y": {"ssn": "2"}}, "empty": []}
    out = redact(args, ["/items/*/card", "/by_name/*/ssn", "/empty/*/x"])
    assert out == {"items": [{"card": REDACTED, "sku": "a"}, {"card": REDACTED, "sku": "b"}],
                   "by_name": {"x": {"ssn": REDACTED}, "y": {"ssn": REDACTED}}, "empty": []}
    assert args["items"][0]["card"] == "4111"


@pytest.mark.parametrize("pointer", ["/a/\u00b2", "/a/\u0663", "/a/1x", "/a/-1", "/a/",
                                     "/a/*/*/*", "/*", "/~2", "/a/~"])
def test_redact_never_raises_on_an_accepted_pointer(pointer: str) -> None:
    """BUG: `_redact` (gateway/audit.py) tests list indices with `str.isdigit()`, which is
    true for "²" (U+00B2), and then `int("²")` raises ValueError. The pointer passes
    PolicyDecision.parse, so a policy's `redact` list can crash the decision record."""
    args = {"a": [1, 2, 3, 4]}
    out = redact(args, [pointer])
    assert isinstance(out, dict)
    assert args == {"a": [1, 2, 3, 4]}


# ---- trace_id ------------------------------------------------------------------------------

def test_trace_id_from_valid_traceparent() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id(header) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("header", [
    None, "", "junk", "00-4bf92f3577b34da6a3ce929d0e0e4736",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx",
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
], ids=repr)
def test_trace_id_junk_is_none(header: str | None) -> None:
    assert trace_id(header) is None


# ---- CallAudit -----------------------------------------------------------------------------

async def test_exception_before_decision_writes_one_deny_record(audit_log: AuditLog,
                                                                audit_path: Path) -> None:
    with pytest.raises(Boom):
        async with CallAudit(audit_log, decision_id="req-1", tool="get_order"):
            raise Boom
    (record,) = _records(audit_path)
    assert record["kind"] == "decision"
    assert record["decision_id"] == "req-1"
    assert record["tool"] == "get_order"
    assert record["action"] == "deny"
    assert record["stage"] == "internal"
    assert record["reasons"] == ["internal_error"]


async def test_exception_after_decision_and_expect_outcome_writes_one_outcome(
        audit_log: AuditLog, audit_path: Path) -> None:
    async def call() -> None:
        async with CallAudit(audit_log, decision_id="req-2") as audit:
            audit.decision(action="allow", stage="policy", reasons=["green_tier: ok"])
            audit.expect_outcome()
            raise Boom

    with pytest.raises(Boom):
        await call()
    decision, outcome = _records(audit_path)
    assert decision["kind"] == "decision"
    assert decision["action"] == "allow"
    assert outcome["kind"] == "outcome"
    assert outcome["decision_id"] == "req-2"
    assert outcome["error"] == "internal_error"


async def test_exception_after_decision_without_action_writes_nothing_more(
        audit_log: AuditLog, audit_path: Path) -> None:
    async def call() -> None:
        async with CallAudit(audit_log, decision_id="req-3") as audit:
            audit.decision(action="deny", stage="scopes", reasons=["insufficient_scope"])
            raise Boom

    with pytest.raises(Boom):
        await call()
    assert [r["kind"] for r in _records(audit_path)] == ["decision"]


async def test_normal_path_writes_nothing_extra(audit_log: AuditLog, audit_path: Path) -> None:
    async with CallAudit(audit_log, decision_id="req-4") as audit:
        audit.decision(action="allow", stage="policy", reasons=["green_tier: ok"])
        audit.expect_outcome()
        audit.outcome(upstream_status=200)
    async with CallAudit(audit_log, decision_id="req-5") as audit:
        audit.decision(action="deny", stage="policy", reasons=["red_tier: no"])
    records = _records(audit_path)
    assert [(r["kind"], r["decision_id"]) for r in records] == [
        ("decision", "req-4"), ("outcome", "req-4"), ("decision", "req-5")]
    assert records[1]["upstream_status"] == 200
    assert "error" not in records[1]


async def test_exit_without_decision_still_writes_one(audit_log: AuditLog,
                                                      audit_path: Path) -> None:
    async with CallAudit(audit_log, decision_id="req-6"):
        pass
    (record,) = _records(audit_path)
    assert (record["kind"], record["action"], record["stage"]) == ("decision", "deny",
                                                                   "internal")


async def test_owed_outcome_written_on_clean_exit(audit_log: AuditLog,
                                                  audit_path: Path) -> None:
    async with CallAudit(audit_log, decision_id="req-7") as audit:
        audit.decision(action="allow", stage="policy", reasons=[])
        audit.expect_outcome()
    records = _records(audit_path)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    assert records[1]["error"] == "internal_error"


async def test_cancellation_writes_one_cancelled_record(audit_log: AuditLog,
                                                        audit_path: Path) -> None:
    with pytest.raises(asyncio.CancelledError):
        async with CallAudit(audit_log, decision_id="req-8"):
            raise asyncio.CancelledError
    (record,) = _records(audit_path)
    assert record["kind"] == "decision"
    assert record["action"] == "deny"
    assert record["reasons"] == ["cancelled"]


async def test_cancelled_task_writes_one_outcome(audit_log: AuditLog, audit_path: Path) -> None:
    started = asyncio.Event()

    async def call() -> None:
        async with CallAudit(audit_log, decision_id="req-9") as audit:
            audit.decision(action="allow", stage="policy", reasons=[])
            audit.expect_outcome()
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = _records(audit_path)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    assert records[1]["error"] == "cancelled"


async def test_decision_raises_when_sink_is_down() -> None:
    log = AuditLog(AuditSettings(file=Path("/dev/full")))
    try:
        async with CallAudit(log, decision_id="req-10") as audit:
            with pytest.raises(AuditUnavailable):
                audit.decision(action="allow", stage="policy", reasons=[])
    finally:
        log.close()


async def test_sink_down_does_not_mask_the_original_exception() -> None:
    log = AuditLog(AuditSettings(file=Path("/dev/full")))
    try:
        with pytest.raises(Boom):
            async with CallAudit(log, decision_id="req-11"):
                raise Boom
    finally:
        log.close()


async def test_base_fields_in_every_record(audit_log: AuditLog, audit_path: Path) -> None:
    async with CallAudit(audit_log, decision_id="req-12", trace_id="t" * 32,
                         principal={"sub": "s", "agent": None, "tenant": "acme"}) as audit:
        audit.decision(action="allow", stage="policy", reasons=[])
        audit.expect_outcome()
        audit.outcome(upstream_status=204)
    for record in _records(audit_path):
        assert record["decision_id"] == "req-12"
        assert record["trace_id"] == "t" * 32
        assert record["principal"] == {"sub": "s", "agent": None, "tenant": "acme"}


async def test_outcome_write_failure_does_not_raise(tmp_path: Path) -> None:
    """The action already happened: a lost outcome record is logged, never turned into an
    error that would tell the agent nothing was done."""
    log = AuditLog(AuditSettings(file=Path("/dev/full")))
    try:
        audit = CallAudit(log, decision_id="req-12")
        audit.expect_outcome()
        audit.outcome(status=201)  # must not raise
    finally:
        log.close()


async def test_file_and_stdout_get_identical_bytes(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(AuditSettings(file=path, stdout=True))
    try:
        log.write("decision", {"decision_id": "same"})
    finally:
        log.close()
    assert capfd.readouterr().out == path.read_text()
