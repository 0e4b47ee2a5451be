"""The hash chain (DESIGN §7): how a record is sealed, and how a chain is verified.

A record's `hash` is the hex SHA-256 — HMAC-SHA256 under `audit.hmac_key_*` — of its
canonical JSON without `hash`: sorted keys, no insignificant whitespace, UTF-8 (RFC 8785's
shape; numbers as orjson writes them). `seq` counts from 1 across files and restarts and
`prev_hash` is the hash of the record before (64 zeros for the first record ever), so an
edited, deleted, inserted or reordered record breaks a link that names it. Without the key
anyone who can write the file can recompute a whole chain; with it, nobody without the key
can.

Records deleted on purpose by retention are accounted for by the `audit` record, event
`deleted`, whose `first_seq_kept` says where the kept chain starts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.files import lines
from gateway.core.canonical import canonical_json

GENESIS = "0" * 64


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is taken over (the record as given: leave `hash` out)."""
    return canonical_json(record)


def digest(data: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def seal(record: Mapping[str, Any], *, seq: int, prev_hash: str,
         key: bytes | None) -> tuple[bytes, str]:
    """The line to write — the record in its own field order (`ts` and `kind` first, for
    people reading the file), its chain fields, `hash` last, a newline — and its hash."""
    chained = {**record, "seq": seq, "prev_hash": prev_hash}
    sealed = digest(canonical(chained), key)
    return orjson.dumps({**chained, "hash": sealed}, option=orjson.OPT_APPEND_NEWLINE), sealed


def hash_of(record: Mapping[str, Any], key: bytes | None) -> str:
    """What a parsed record's `hash` must be."""
    return digest(canonical({k: v for k, v in record.items() if k != "hash"}), key)


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    decision_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: decision_id={self.decision_id}: {self.message}"


@dataclass
class Verification:
    ok: bool = True
    records: int = 0
    files: list[Path] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    problem: Problem | None = None
    # What holds but an auditor should know: a restart after an unclean stop, a torn
    # record cut at a restart (records cut from the end before then cannot be told from
    # a crash).
    warnings: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class _Link:
    """What a neighbour needs of a record: where it is, its seq and hash, whose it is."""
    file: Path
    line: int
    seq: int
    prev_hash: str
    hash: str
    decision_id: str | None


@dataclass
class _File:
    """One file checked on its own: its seals and its inner links."""
    path: Path
    records: int = 0
    first: _Link | None = None
    last: _Link | None = None
    kept_from: int | None = None
    problem: Problem | None = None
    warnings: list[Problem] = field(default_factory=list)


class _Broken(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


PARALLEL_BYTES = 32 << 20   # below this, starting worker processes costs more than it saves


def _check_file(path: Path, key: bytes | None) -> _File:
    out = _File(path)
    try:
        for number, raw in lines(path):
            link, record = _sealed(path, number, raw, key)
            if out.last is None:
                out.first = link
            else:
                _link(out.last, link)
            if record.get("kind") == "audit":
                out.kept_from = _log_event(link, record, out.warnings, out.kept_from)
            out.last = link
            out.records += 1
    except _Broken as broken:
        out.problem = broken.problem
    return out


def _log_event(link: _Link, record: dict[str, Any], warnings: list[Problem],
               kept_from: int | None) -> int | None:
    """The log's own records: a deletion must be one retention allowed (sealed `ts` of
    the file's last record against `retain_days`); a restart may deserve a warning."""
    event = record.get("event")
    if event == "deleted":
        age = _seconds_between(record.get("last_ts"), record.get("ts"))
        keep = record.get("retain_days")
        if age is None or not isinstance(keep, int | float) or age < keep * 86_400:
            raise _Broken(Problem(link.file, link.line, None, (
                f"retention deleted {record.get('file')}, whose last record was not "
                f"{keep} days old: records were deleted before their time")))
        kept = record.get("first_seq_kept")
        return kept if isinstance(kept, int) else kept_from
    if event == "opened" and record.get("discarded_bytes"):
        warnings.append(Problem(link.file, link.line, None, (
            f"the gateway restarted here and cut {record['discarded_bytes']} bytes of a "
            "torn last record (a write the machine lost, or a file cut by hand)")))
    elif event == "opened" and record.get("previous_stop") == "unclean":
        warnings.append(Problem(link.file, link.line, None, (
            "the gateway restarted here after an unclean stop: records cut from the end "
            "before it cannot be told from a crash; compare with a head kept elsewhere")))
    return kept_from


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def _sealed(path: Path, number: int, raw: bytes,
            key: bytes | None) -> tuple[_Link, dict[str, Any]]:
    """A line's record with its own seal checked; `_Broken` for a line that is torn, not
    a record, or whose hash does not match its content."""
    if not raw.endswith(b"\n"):
        raise _Broken(Problem(path, number, None, "the last record is cut short (a "
                              "truncated file, or a write the machine lost)"))
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Broken(Problem(path, number, None, "not a JSON record")) from None
    if not isinstance(record, dict):
        raise _Broken(Problem(path, number, None, "not a JSON record"))
    decision_id = record.get("decision_id")
    who = decision_id if isinstance(decision_id, str) else None
    seq, prev, sealed = record.get("seq"), record.get("prev_hash"), record.pop("hash", None)
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1
            and isinstance(prev, str) and isinstance(sealed, str)):
        raise _Broken(Problem(path, number, who, "no chain fields (seq, prev_hash, hash)"))
    if not hmac.compare_digest(digest(canonical(record), key), sealed):
        raise _Broken(Problem(path, number, who, "the hash does not match the record: it "
                              "was edited, or the key is not the one it was sealed with"))
    return _Link(path, number, seq, prev, sealed, who), record


def verify(paths: Sequence[Path], key: bytes | None, *, partial: bool = False) -> Verification:
    """Check every link of the chain held by `paths` (in any order: they are put in chain
    order by their first `seq`), files in parallel when there is enough to read. `partial`
    accepts a chain that starts after seq 1 with no retention record saying why (the caller
    gave only part of it). The problem named is the first in chain order."""
    files = _check_all(paths, key)
    result = Verification()
    for f in files:   # a file whose first line is broken cannot be put in order
        if f.first is None and f.problem is not None:
            return _failed(result, f.problem)
    ordered = sorted((f for f in files if f.first is not None),
                     key=lambda f: f.first.seq if f.first else 0)
    result.files = [f.path for f in ordered]
    prev: _Link | None = None
    kept_from: int | None = None
    for f in ordered:
        assert f.first is not None
        try:
            if prev is None:
                _start(f.first)
            else:
                _link(prev, f.first)
        except _Broken as broken:
            return _failed(result, broken.problem)
        if f.problem is not None:
            return _failed(result, f.problem)
        result.records += f.records
        result.warnings += f.warnings
        kept_from = f.kept_from if f.kept_from is not None else kept_from
        prev = f.last
    if ordered:
        first = ordered[0].first
        assert first is not None and prev is not None
        result.first_seq, result.last_seq, result.head = first.seq, prev.seq, prev.hash
        if first.seq != 1 and not partial and (kept_from is None or first.seq > kept_from):
            return _failed(result, Problem(
                first.file, first.line, first.decision_id,
                f"the chain starts at seq {first.seq}: records 1..{first.seq - 1} are "
                "missing and no retention record accounts for them"))
    return result


def _check_all(paths: Sequence[Path], key: bytes | None) -> list[_File]:
    size = sum(p.stat().st_size for p in paths if p.exists())
    if len(paths) < 2 or size < PARALLEL_BYTES or (os.cpu_count() or 1) < 2:
        return [_check_file(p, key) for p in paths]
    with ProcessPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(_check_file, paths, repeat(key)))


def _failed(result: Verification, problem: Problem) -> Verification:
    result.ok, result.problem = False, problem
    return result


def _start(first: _Link) -> None:
    if first.seq == 1 and first.prev_hash != GENESIS:
        raise _Broken(Problem(first.file, first.line, first.decision_id,
                              "the first record does not start the chain (prev_hash)"))


def _link(prev: _Link, line: _Link) -> None:
    expected = prev.seq + 1
    if line.seq != expected:
        where = "" if prev.file == line.file else f" (after {prev.file}:{prev.line})"
        what = (f"{line.seq - expected} record(s) missing before it"
                if line.seq > expected else "out of order or repeated")
        raise _Broken(Problem(line.file, line.line, line.decision_id,
                              f"seq {line.seq} where {expected} was due{where}: {what}"))
    if line.prev_hash != prev.hash:
        raise _Broken(Problem(line.file, line.line, line.decision_id,
                              "prev_hash does not name the record before it: a record was "
                              "inserted or replaced"))
