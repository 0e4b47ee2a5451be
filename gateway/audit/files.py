"""Where a chain's records live: the live file and the files rotated out of it.

The live file is `audit.file` (say `audit/toolgate.jsonl`); a rotated file keeps its stem
and gains the UTC time it was rotated (`audit/toolgate.20261202T230501.123456Z.jsonl`), so
a directory listing sorts them in order and `toolgate audit verify|query|report` given the
live file finds every file of its chain. A directory may hold several chains (one per
writing process): `chains` tells them apart by name. And how to read a file's ends
without reading it whole: its last line, its first and last records (`chain_ends`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_STAMP_RE = r"\d{8}T\d{6}\.\d{6}Z"


def rotated_name(live: Path, at: float) -> Path:
    """The name the live file takes when it is rotated out at `at` (epoch seconds)."""
    stamp = datetime.fromtimestamp(at, UTC).strftime(_STAMP)
    return live.with_name(f"{live.stem}.{stamp}{live.suffix}")


def family(live: Path) -> list[Path]:
    """The chain's files, oldest first: every rotated file of `live`, then `live` itself if
    it exists."""
    pattern = re.compile(re.escape(live.stem) + r"\." + _STAMP_RE + re.escape(live.suffix))
    try:
        rotated = sorted(p for p in live.parent.iterdir()
                         if pattern.fullmatch(p.name) and p.is_file())
    except FileNotFoundError:
        rotated = []
    return rotated + ([live] if live.is_file() else [])


def worker_file(live: Path, index: int) -> Path:
    """The live file of worker `index` (1-based) of `toolgate serve --workers N`: worker 1
    writes `live` itself, worker i writes `<stem>.w<i><suffix>` beside it."""
    return live if index == 1 else live.with_name(f"{live.stem}.w{index}{live.suffix}")


def worker_chains(live: Path) -> list[Path]:
    """The live file of every chain written from `live` by one process or by workers:
    `live`, then each `<stem>.w<i><suffix>` in worker order, each named when its live file
    or any file rotated out of it is on disk (`live` always first)."""
    pattern = re.compile(re.escape(live.stem) + r"\.w([1-9][0-9]*)(?:\." + _STAMP_RE + r")?"
                         + re.escape(live.suffix))
    try:
        found = {int(m.group(1)) for p in live.parent.iterdir()
                 if (m := pattern.fullmatch(p.name)) is not None and int(m.group(1)) > 1}
    except FileNotFoundError:
        found = set()
    return [live, *(worker_file(live, i) for i in sorted(found))]


def expand(paths: Iterable[Path]) -> list[Path]:
    """Command-line paths as files: a directory stands for every `*.jsonl` in it; a live
    file for its whole family. Duplicates are dropped, the order kept."""
    seen: dict[Path, None] = {}
    for path in paths:
        found = (sorted(path.glob("*.jsonl")) if path.is_dir()
                 else family(path) if path.is_file() and not _is_rotated(path)
                 else [path])
        for f in found:
            seen.setdefault(f, None)
    return list(seen)


def _is_rotated(path: Path) -> bool:
    return re.search(r"\." + _STAMP_RE + r"\.[^.]+$", path.name) is not None


def chains(paths: Iterable[Path]) -> dict[Path, list[Path]]:
    """Files grouped by the chain they belong to, named by its live file: one process
    writes one chain (`toolgate.jsonl` and its rotated files), and a directory may hold the
    chains of several (replicas, workers)."""
    out: dict[Path, list[Path]] = {}
    for path in paths:
        live = path.with_name(re.sub(r"\." + _STAMP_RE + r"(?=\.[^.]+$)", "", path.name))
        out.setdefault(live, []).append(path)
    return out


def lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line as read) of a file, 1-based. Every line ends with its newline but
    a torn last one, which the caller judges."""
    with path.open("rb") as f:
        yield from enumerate(f, start=1)


TAIL_CHUNK = 65_536


def end_of_last_line(path: Path, size: int) -> int:
    """The offset just past the last newline (0 when there is none)."""
    with path.open("rb") as f:
        pos = size
        while pos > 0:
            step = min(TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            at = chunk.rfind(b"\n")
            if at >= 0:
                return pos + at + 1
    return 0


def last_line(path: Path, *, count: bool = True) -> tuple[bytes, int] | None:
    """The last whole line of a file and its 1-based number (0 unless `count`: counting
    reads the whole file), or None if it has none."""
    size = path.stat().st_size
    end = end_of_last_line(path, size)
    if end == 0:
        return None
    start = end_of_last_line(path, end - 1)
    number = 0
    with path.open("rb") as f:
        f.seek(start)
        raw = f.read(end - start)
        if count:
            f.seek(0)
            remaining = start
            while remaining > 0:
                block = f.read(min(1 << 20, remaining))
                number += block.count(b"\n")
                remaining -= len(block)
            number += 1
    return raw, number


def record_of(found: tuple[bytes, int] | bytes | None) -> dict[str, Any]:
    raw = found[0] if isinstance(found, tuple) else found
    try:
        record = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


@dataclass(frozen=True)
class Ends:
    """A rotated file's first and last records, as retention needs them."""
    path: Path
    first_seq: int | None
    last_seq: int | None
    last: dict[str, Any] | None
    last_ts: float | None


def chain_ends(path: Path) -> Ends:
    with path.open("rb") as f:
        first = record_of(f.readline())
    last = record_of(last_line(path, count=False))
    seq, first_seq = last.get("seq"), first.get("seq")
    return Ends(path, first_seq if isinstance(first_seq, int) else None,
                seq if isinstance(seq, int) else None, last or None, ts_of(last))


def first_ts(path: Path) -> float | None:
    """When the file's first record was written (its `ts`), or None."""
    try:
        with path.open("rb") as f:
            return ts_of(record_of(f.readline()))
    except OSError:
        return None


def ts_of(record: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(record["ts"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None
