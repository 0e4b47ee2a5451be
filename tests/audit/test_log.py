"""The audit log's writer: one sealed JSON line per record in one chain, the same bytes in
every sink, a file only its owner reads, a chain that continues across restarts and
rotation, a file that cannot vanish unnoticed, and `AuditUnavailable` when no record can
be written."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import pytest

from gateway.audit import chain
from gateway.audit import log as log_module
from gateway.audit.files import family
from gateway.audit.log import AuditLog, AuditStartError
from gateway.audit.settings import AuditSettings, Fsync
from gateway.core.canonical import rfc3339_precise
from gateway.core.errors import AuditUnavailable
from tests.audit.conftest import read_records
from tests.support import unwritable

KEY = b"k" * 32


def _verify(path: Path, key: bytes | None = None) -> chain.Verification:
    result = chain.verify(family(path), key)
    assert result.ok, result.problem
    return result


def test_one_sealed_json_line_per_write_with_ts_and_kind_first(audit_log: AuditLog,
                                                                audit_path: Path) -> None:
    audit_log.write("decision", {"decision_id": "req-1", "action": "allow",
                                 "reasons": ["green_tier: ok"], "args": {"a": 1}})
    audit_log.write("outcome", {"decision_id": "req-1", "upstream_status": 201})
    text = audit_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    opened, first, second = read_records(audit_path, audit_events=True)
    assert (opened["kind"], opened["event"], opened["seq"]) == ("audit", "opened", 1)
    assert opened["prev_hash"] == chain.GENESIS
    assert list(first)[:2] == ["ts", "kind"]
    assert list(first)[-1] == "hash"
    assert (first["kind"], first["action"], first["args"]) == ("decision", "allow", {"a": 1})
    assert second["upstream_status"] == 201
    assert (first["seq"], second["seq"]) == (2, 3)
    assert first["prev_hash"] == opened["hash"] and second["prev_hash"] == first["hash"]
    assert first["ts"].endswith("Z")
    _verify(audit_path)


def test_hmac_key_seals_so_only_the_key_verifies(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path, hmac_key_env="K"), {"K": KEY.decode()})
    log.write("decision", {"decision_id": "req-1"})
    log.close()
    _verify(audit_path, KEY)
    plain = chain.verify(family(audit_path), None)
    wrong = chain.verify(family(audit_path), b"x" * 32)
    for result in (plain, wrong):
        assert not result.ok and result.problem is not None
        assert result.problem.line == 1 and "key" in result.problem.message


def test_a_short_or_missing_key_is_a_start_error(audit_path: Path) -> None:
    with pytest.raises(AuditStartError, match="at least 32 are needed"):
        AuditLog(AuditSettings(file=audit_path, hmac_key_env="K"), {"K": "short"})
    with pytest.raises(AuditStartError, match="not set"):
        AuditLog(AuditSettings(file=audit_path, hmac_key_env="K"), {})


def test_file_created_owner_only(audit_log: AuditLog, audit_path: Path) -> None:
    audit_log.write("decision", {"decision_id": "req-1"})
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
    assert audit_log.location == str(audit_path)


def test_a_restart_continues_the_chain_from_the_last_record(audit_path: Path) -> None:
    for n in range(3):
        log = AuditLog(AuditSettings(file=audit_path))
        log.write("decision", {"decision_id": f"req-{n}"})
        log.close()
    records = read_records(audit_path, audit_events=True)
    assert [r["seq"] for r in records] == list(range(1, 10))
    reopened = [r for r in records if r.get("event") == "opened"]
    assert [r["resumed"] for r in reopened] == [
        None, {"file": audit_path.name, "seq": 3}, {"file": audit_path.name, "seq": 6}]
    assert _verify(audit_path).records == 9


def test_a_torn_last_record_is_cut_and_said(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1"})
    log.close()
    with audit_path.open("ab") as f:
        f.write(b'{"ts":"2026-12-02T00:00:00Z","kind":"decis')   # a write the machine lost
    log = AuditLog(AuditSettings(file=audit_path))
    log.close()
    opened = [r for r in read_records(audit_path, audit_events=True)
              if r.get("event") == "opened"][-1]
    assert opened["discarded_bytes"] == 42
    (warning,) = _verify(audit_path).warnings       # it holds, and the auditor is told
    assert warning.line == 4 and "cut 42 bytes" in warning.message


def test_a_restart_after_an_unclean_stop_is_a_warning(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1"})
    log.close()
    clean = AuditLog(AuditSettings(file=audit_path))
    clean.write("decision", {"decision_id": "req-2"})
    clean._file.close()          # type: ignore[union-attr]   # as a SIGKILL leaves it
    clean._closed = True
    AuditLog(AuditSettings(file=audit_path)).close()
    opened = [r for r in read_records(audit_path, audit_events=True)
              if r.get("event") == "opened"]
    assert [o.get("previous_stop") for o in opened] == [None, "clean", "unclean"]
    (warning,) = _verify(audit_path).warnings
    assert "unclean stop" in warning.message and warning.line == 6


def test_an_edited_last_record_refuses_to_start(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1", "action": "deny"})
    log.close()   # the last record is now `closed`: edit it
    text = audit_path.read_text().replace('"event":"closed"', '"event":"clozed"')
    audit_path.write_text(text)
    with pytest.raises(AuditStartError, match=rf"{audit_path.name}:3: the last record does "
                                              "not verify"):
        AuditLog(AuditSettings(file=audit_path))


def test_a_second_writer_of_the_same_file_is_refused(audit_log: AuditLog,
                                                     audit_path: Path) -> None:
    with pytest.raises(AuditStartError, match="another process"):
        AuditLog(AuditSettings(file=audit_path))


def test_a_device_is_not_an_audit_file() -> None:
    with pytest.raises(AuditStartError, match="not a regular file"):
        AuditLog(AuditSettings(file=Path("/dev/full")))


def test_bytes_another_writer_appended_are_said_and_kept(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1"})
    with audit_path.open("ab") as f:
        f.write(b'{"kind":"decision","decision_id":"forged"')     # no newline
    log.write("decision", {"decision_id": "req-2"})
    log.close()
    lines = audit_path.read_bytes().splitlines()
    assert lines[2] == b'{"kind":"decision","decision_id":"forged"'   # evidence kept
    reopened = json.loads(lines[3])
    assert (reopened["event"], reopened["reason"]) == ("reopened", "appended")
    problem = chain.verify([audit_path], None).problem
    assert problem is not None and problem.line == 3


@pytest.mark.parametrize("how", ["deleted", "renamed", "replaced", "truncated"])
def test_a_file_changed_under_the_log_is_reopened_and_said_first(audit_path: Path,
                                                                  how: str) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1"})
    moved = audit_path.with_name("moved.jsonl")
    if how == "deleted":
        audit_path.unlink()
    elif how == "renamed":
        audit_path.rename(moved)
    elif how == "replaced":
        audit_path.with_name("other").write_text("")
        audit_path.with_name("other").replace(audit_path)
    else:
        os.truncate(audit_path, 0)
    log.write("decision", {"decision_id": "req-2"})
    log.close()
    reopened, second, _closed = read_records(audit_path, audit_events=True)
    assert (reopened["event"], second["decision_id"]) == ("reopened", "req-2")
    expected = {"deleted": "missing", "renamed": "missing", "replaced": "replaced",
                "truncated": "truncated"}[how]
    assert reopened["reason"] == expected
    assert reopened["seq"] == 3 and second["seq"] == 4
    if how != "truncated":   # another file: never mistaken for the old one's inode
        assert reopened["before"]["inode"] != reopened["after"]["inode"]
    if how == "renamed":   # nothing was lost: the renamed file and the new one verify
        assert chain.verify([moved, audit_path], None).ok
    else:                  # the break is named: the new file starts after missing records
        result = chain.verify([audit_path], None)
        assert not result.ok and result.problem is not None
        assert "records 1..2 are missing" in result.problem.message


def test_a_file_deleted_as_its_record_is_written_refuses_the_action(
        audit_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    sink = log._file
    assert sink is not None
    write = sink.write

    def deleted_in_between(data: bytes) -> None:
        monkeypatch.setattr(sink, "write", write)   # once
        audit_path.unlink()                          # after the check, before the write
        write(data)

    monkeypatch.setattr(sink, "write", deleted_in_between)
    with pytest.raises(AuditUnavailable):
        log.write("decision", {"decision_id": "lost"})
    log.write("decision", {"decision_id": "req-2"})
    log.close()
    reopened, record, _closed = read_records(audit_path, audit_events=True)
    assert (reopened["reason"], reopened["refused"], record["decision_id"]) == (
        "missing", 1, "req-2")
    assert reopened["seq"] == 2, "the lost record did not count"


def test_a_directory_in_its_place_refuses_until_it_is_gone(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    audit_path.unlink()
    audit_path.mkdir()
    for n in range(2):
        with pytest.raises(AuditUnavailable):
            log.write("decision", {"decision_id": f"refused-{n}"})
    assert log.check() is not None
    audit_path.rmdir()
    assert log.check() is None           # a probe recovers a quiet gateway too
    log.write("decision", {"decision_id": "req-1"})
    log.close()
    reopened, record, _closed = read_records(audit_path, audit_events=True)
    assert reopened["event"] == "reopened" and reopened["reason"] == "replaced"   # found first
    assert reopened["refused"] == 2 and reopened["error"] == "EISDIR"   # probes don't count
    assert record["decision_id"] == "req-1"


def test_an_unwritable_file_refuses_then_recovers_with_a_record(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("decision", {"decision_id": "req-1"})
    with unwritable(audit_path), pytest.raises(AuditUnavailable) as info:
        log.write("decision", {"decision_id": "refused"})
    assert info.value.status == 503 and str(info.value.code) == "audit_unavailable"
    assert isinstance(info.value.__cause__, OSError)
    log.write("decision", {"decision_id": "req-2"})
    log.close()
    records = read_records(audit_path, audit_events=True)
    assert [r.get("decision_id") or r["event"] for r in records] == [
        "opened", "req-1", "recovered", "req-2", "closed"]
    recovered = records[2]
    assert (recovered["error"], recovered["refused"]) == ("EPERM", 1)
    assert "refused" not in audit_path.read_text().split('"recovered"')[0]
    _verify(audit_path)


def test_rotation_by_size_links_files_and_retention_is_recorded(
        audit_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_now = time.time()
    clock = [real_now - 7200]                      # two hours ago
    monkeypatch.setattr("gateway.audit.log.time.time", lambda: clock[0])
    settings = AuditSettings(file=audit_path, rotate_bytes=4096, retain_s=3600)
    log = AuditLog(settings)
    for n in range(60):
        log.write("decision", {"decision_id": f"req-{n}", "pad": "x" * 100})
    log.close()
    files = family(audit_path)
    assert len(files) >= 3
    result = _verify(audit_path)
    assert result.records == sum(len(read_records(f, audit_events=True)) for f in files)
    for rotated in files[1:]:
        first = read_records(rotated, audit_events=True)[0]
        assert first["event"] == "rotated"
    # A file's mtime says nothing: touched into the past, nothing young is deleted.
    clock[0] += 1800
    young = AuditLog(AuditSettings(file=audit_path.with_name("young.jsonl"),
                                   rotate_bytes=4096, retain_s=3600))
    for n in range(60):
        young.write("decision", {"decision_id": f"young-{n}", "pad": "x" * 100})
    young.close()
    for old in family(audit_path.with_name("young.jsonl"))[:-1]:
        os.utime(old, (0, 0))
    AuditLog(AuditSettings(file=audit_path.with_name("young.jsonl"), rotate_bytes=4096,
                           retain_s=3600)).close()
    assert len(family(audit_path.with_name("young.jsonl"))) >= 3, "mtime is not age"
    # Sealed an hour and a half ago: past retention, so the next start deletes them.
    clock[0] = real_now
    log = AuditLog(settings)
    log.close()
    assert family(audit_path) == [audit_path]
    deleted = [r for r in read_records(audit_path, audit_events=True)
               if r.get("event") == "deleted"]
    assert [d["file"] for d in deleted] == [f.name for f in files[:-1]]
    assert deleted[0]["first_seq"] == 1 and deleted[0]["retain_days"] == 3600 / 86_400
    result = _verify(audit_path)        # the kept tail is whole, and accounted for
    assert result.first_seq == deleted[-1]["first_seq_kept"]


def test_a_deletion_retention_did_not_allow_is_named(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.write("audit", {"decision_id": None, "event": "deleted", "file": "x.jsonl",
                        "reason": "retention", "retain_days": 1.0, "first_seq": 1,
                        "last_seq": 1, "last_hash": "0" * 64,
                        "last_ts": rfc3339_precise(time.time() - 3600),   # an hour old, not a day
                        "first_seq_kept": 2})
    log.close()
    problem = chain.verify([audit_path], None).problem
    assert problem is not None and problem.line == 2
    assert "deleted before their time" in problem.message


def test_rotation_by_age(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path, rotate_s=3600))
    log.write("decision", {"decision_id": "req-1"})
    log.close()
    records = audit_path.read_bytes().splitlines()
    old = json.loads(records[0])
    old_ts = "2000-01-01T00:00:00.000000Z"
    # Reseal the first record as if written long ago (no key: anyone can, which is why
    # the key exists), then the rest of the chain after it.
    resealed, prev = [], chain.GENESIS
    for n, line in enumerate(records):
        record = json.loads(line)
        record.pop("hash")
        if n == 0:
            record["ts"] = old_ts
        record["prev_hash"] = prev
        data, prev = chain.seal({k: v for k, v in record.items()
                                 if k not in ("seq", "prev_hash")},
                                seq=record["seq"], prev_hash=prev, key=None)
        resealed.append(data)
    audit_path.write_bytes(b"".join(resealed))
    del old
    log = AuditLog(AuditSettings(file=audit_path, rotate_s=3600))
    log.write("decision", {"decision_id": "req-2"})
    log.close()
    assert len(family(audit_path)) == 2
    _verify(audit_path)


@pytest.mark.parametrize("fsync", list(Fsync))
def test_every_fsync_mode_writes_whole_records(audit_path: Path, fsync: Fsync) -> None:
    log = AuditLog(AuditSettings(file=audit_path, fsync=fsync, fsync_interval_s=0.01))
    for n in range(5):
        log.write("decision", {"decision_id": f"req-{n}"})
    log.sync()
    log.close()
    assert _verify(audit_path).records == 7


def test_stdout_sink_alone_is_a_chain_of_its_own(capfd: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    log = AuditLog(AuditSettings(file=None, stdout=True))
    log.write("decision", {"decision_id": "req-1", "action": "deny"})
    log.close()
    assert log.location == "stdout"
    out = capfd.readouterr().out
    copy = tmp_path / "stdout.jsonl"
    copy.write_text(out)
    records = read_records(copy, audit_events=True)
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[1]["action"] == "deny"
    assert chain.verify([copy], None).ok


def test_file_and_stdout_get_the_same_bytes(audit_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(AuditSettings(file=audit_path, stdout=True))
    log.write("decision", {"decision_id": "req-1", "reasons": ["a: b"], "args": {"x": [1]}})
    log.close()
    assert capfd.readouterr().out == audit_path.read_text()


def test_no_sink_is_refused() -> None:
    with pytest.raises(AuditStartError, match="no sink"):
        AuditLog(AuditSettings(file=None, stdout=False))


def test_close_is_idempotent_and_then_writes_fail(audit_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(AuditSettings(file=audit_path, stdout=True))
    log.close()
    log.close()
    with pytest.raises(AuditUnavailable):
        log.write("decision", {"decision_id": "late"})
    print("stdout still open")
    assert "stdout still open" in capfd.readouterr().out


def test_a_log_from_before_the_chain_is_set_aside_not_refused(audit_path: Path) -> None:
    audit_path.parent.mkdir(parents=True)
    audit_path.write_text('{"ts": "2026-11-01T00:00:00Z", "kind": "decision"}\n')
    log = AuditLog(AuditSettings(file=audit_path))
    log.close()
    (aside,) = audit_path.parent.glob("toolgate.jsonl.unchained-*")
    assert aside.read_text() == '{"ts": "2026-11-01T00:00:00Z", "kind": "decision"}\n'
    opened = read_records(audit_path, audit_events=True)[0]
    assert (opened["seq"], opened["unchained"]) == (1, aside.name)
    assert _verify(audit_path).records == 2


def test_a_file_others_may_read_is_made_owner_only_and_said(audit_path: Path) -> None:
    audit_path.parent.mkdir(parents=True)
    audit_path.touch(mode=0o644)
    audit_path.chmod(0o644)
    AuditLog(AuditSettings(file=audit_path)).close()
    assert stat.S_IMODE(audit_path.stat().st_mode) == 0o600
    assert read_records(audit_path, audit_events=True)[0]["mode_fixed"] == "0o644"


def test_a_file_of_another_user_is_refused(audit_path: Path) -> None:
    audit_path.parent.mkdir(parents=True)
    audit_path.touch()
    os.chown(audit_path, 65534, 65534)      # nobody's: it could read every record to come
    with pytest.raises(AuditStartError, match="belongs to another user"):
        AuditLog(AuditSettings(file=audit_path))


def test_after_close_nothing_is_written_and_the_probe_says_so(audit_path: Path) -> None:
    log = AuditLog(AuditSettings(file=audit_path))
    log.close()
    size = audit_path.stat().st_size
    assert log.check() == "the audit log is closed"
    with pytest.raises(AuditUnavailable):
        log.write("decision", {"decision_id": "late"})
    assert audit_path.stat().st_size == size


def test_a_stdout_line_left_unended_is_ended_before_the_next(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(AuditSettings(file=None, stdout=True))
    real = log_module._write_all

    def half_then_fail(fd: int, data: bytes) -> None:
        monkeypatch.setattr(log_module, "_write_all", real)   # once
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.EPIPE, "broken pipe")

    monkeypatch.setattr(log_module, "_write_all", half_then_fail)
    with pytest.raises(AuditUnavailable):
        log.write("decision", {"decision_id": "torn"})
    log.write("decision", {"decision_id": "whole"})
    log.close()
    lines = capfd.readouterr().out.splitlines()
    assert json.loads(lines[-2])["decision_id"] == "whole"   # on a line of its own
    assert '"torn"' not in lines[-2]
