"""The hash chain: every kind of tampering is found and named as FILE:LINE with the
record's decision_id; an intact chain, rotated or restarted, verifies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.audit import chain
from gateway.audit.files import family
from gateway.audit.log import AuditLog
from gateway.audit.settings import AuditSettings

KEY = b"s" * 32


def _write(path: Path, n: int, *, key: bytes | None = None, **settings: object) -> list[Path]:
    environ = {"K": key.decode()} if key else {}
    log = AuditLog(AuditSettings(file=path, hmac_key_env="K" if key else None,
                                 **settings),  # type: ignore[arg-type]
                   environ)
    for i in range(n):
        log.write("decision", {"decision_id": f"req-{i}", "action": "allow",
                               "args": {"amount": i, "note": "é" * (i % 3)}})
    log.close()
    return family(path)


def _lines(path: Path) -> list[str]:
    # Split at newlines only: a record may hold U+2028, which str.splitlines splits at.
    return [line.decode() for line in path.read_bytes().splitlines(keepends=True)]


def _problem(paths: list[Path], key: bytes | None = None) -> chain.Problem:
    result = chain.verify(paths, key)
    assert not result.ok
    assert result.problem is not None
    return result.problem


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def test_an_intact_chain_verifies(path: Path) -> None:
    files = _write(path, 10)
    result = chain.verify(files, None)
    assert result.ok and result.problem is None
    assert (result.records, result.first_seq, result.last_seq) == (12, 1, 12)
    assert result.head == json.loads(_lines(path)[-1])["hash"]


def test_the_hash_is_sha256_of_the_canonical_record_without_hash(path: Path) -> None:
    """The README's recipe, with floats, non-ASCII and control characters in the record."""
    log = AuditLog(AuditSettings(file=path))
    log.write("decision", {"decision_id": "req-1", "spend": {"amount": 250.0},
                           "latency_ms": {"total": 0.887, "policy": 0.0001},
                           "args": {"name": "Zoë \u2028\x01", "n": [1, 2.5, -0.0, 1e16]}})
    log.close()
    record = json.loads(_lines(path)[1])
    sealed = record.pop("hash")
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(body.encode()).hexdigest() == sealed


def test_an_edited_record_is_named(path: Path) -> None:
    _write(path, 5)
    lines = _lines(path)
    lines[3] = lines[3].replace('"amount":2', '"amount":20000')
    path.write_text("".join(lines))
    problem = _problem([path])
    assert (problem.file, problem.line, problem.decision_id) == (path, 4, "req-2")
    assert "edited" in problem.message
    assert str(problem).startswith(f"{path}:4: decision_id=req-2: ")


def test_a_deleted_record_is_named(path: Path) -> None:
    _write(path, 5)
    lines = _lines(path)
    del lines[2]
    path.write_text("".join(lines))
    problem = _problem([path])
    assert (problem.line, problem.decision_id) == (3, "req-2")
    assert "1 record(s) missing" in problem.message


def test_reordered_records_are_named(path: Path) -> None:
    _write(path, 5)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))
    problem = _problem([path])
    assert (problem.line, problem.decision_id) == (3, "req-2")


def test_an_inserted_record_is_named_even_with_a_valid_hash(path: Path) -> None:
    _write(path, 5)
    lines = _lines(path)
    before = json.loads(lines[2])
    forged, _ = chain.seal({"ts": before["ts"], "kind": "decision", "decision_id": "forged"},
                           seq=before["seq"] + 1, prev_hash=before["hash"], key=None)
    lines.insert(3, forged.decode())
    path.write_text("".join(lines))
    problem = _problem([path])
    # The forgery links back; the record after it cannot (seq and prev_hash).
    assert (problem.line, problem.decision_id) == (5, "req-2")


def test_without_the_key_a_recomputed_chain_fails(path: Path) -> None:
    _write(path, 3, key=KEY)
    assert chain.verify([path], KEY).ok
    problem = _problem([path], b"w" * 32)
    assert problem.line == 1 and "key" in problem.message
    # An attacker without the key reseals every line with plain SHA-256: still caught.
    forged, prev = [], chain.GENESIS
    for line in _lines(path):
        record = json.loads(line)
        for field in ("hash", "seq", "prev_hash"):
            record.pop(field)
        data, prev = chain.seal(record, seq=len(forged) + 1, prev_hash=prev, key=None)
        forged.append(data)
    path.write_bytes(b"".join(forged))
    assert _problem([path], KEY).line == 1


def test_a_truncated_tail_is_named(path: Path) -> None:
    _write(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    problem = _problem([path])
    assert problem.line == len(data[:-30].splitlines())
    assert "cut short" in problem.message


def test_a_line_that_is_not_json_is_named(path: Path) -> None:
    _write(path, 3)
    lines = _lines(path)
    lines[1] = "not json\n"
    path.write_text("".join(lines))
    problem = _problem([path])
    assert (problem.line, problem.message) == (2, "not a JSON record")


def test_rotated_files_verify_in_any_order_and_a_missing_one_is_a_gap(path: Path) -> None:
    files = _write(path, 80, rotate_bytes=4096)
    assert len(files) >= 4
    assert chain.verify(list(reversed(files)), None).ok
    missing = files[1]
    problem = _problem([f for f in files if f != missing])
    assert problem.file == files[2] and problem.line == 1
    assert f"after {files[0]}" in problem.message and "missing" in problem.message


def test_a_chain_that_starts_late_needs_a_retention_record(path: Path) -> None:
    files = _write(path, 80, rotate_bytes=4096)
    problem = _problem(files[1:])
    assert "no retention record" in problem.message
    assert chain.verify(files[1:], None, partial=True).ok


def test_a_chain_restarted_many_times_verifies(path: Path) -> None:
    for _ in range(4):
        _write(path, 3)
    result = chain.verify(family(path), None)
    assert result.ok and result.records == 4 * 5
