"""The audit log's writer: one JSON line per record, the same bytes in every sink, a file
only its owner reads, and `AuditUnavailable` when a sink cannot be written."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.config import AuditSettings
from gateway.core.errors import AuditUnavailable
from tests.audit.conftest import read_records

# ---- AuditLog --------------------------------------------------------------------------

def test_one_json_line_per_write_with_ts_and_kind_first(audit_log: AuditLog,
                                                         audit_path: Path) -> None:
    audit_log.write("decision", {"decision_id": "req-1", "action": "allow",
                                 "reasons": ["green_tier: ok"], "args": {"a": 1}})
    audit_log.write("outcome", {"decision_id": "req-1", "upstream_status": 201})
    text = audit_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert text.count("\n") == 2
    first, second = read_records(audit_path)
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
    records = read_records(audit_path)
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
    (in_file,) = read_records(audit_path)
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
