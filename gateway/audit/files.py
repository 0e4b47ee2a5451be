"""Where a chain's records live: the live file and the files rotated out of it.

The live file is `audit.file` (say `audit/toolgate.jsonl`); a rotated file keeps its stem
and gains the UTC time it was rotated (`audit/toolgate.20261202T230501.123456Z.jsonl`), so
a directory listing sorts them in order and `toolgate audit verify|query|report` given the
live file finds every file of its chain. A directory may hold several chains (one per
writing process): `chains` tells them apart by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

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
