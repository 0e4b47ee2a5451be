"""Helpers of the audit sink tests (`test_audit_sink.py`): the ways to take the audit file
from under a running gateway, reading every record it left on disk, checking that no
action it took lacks the record that allowed it, and starting a gateway that must refuse
to start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import Gateway, Seen
from tests.support import unwritable

# A green tool whose upstream holds the request until the test opens its gate: a forwarded
# call the gateway can be killed in the middle of (the shipped `slow_tool` times out first).
HELD_OPEN_SPEC = """\
- name: held_open
  upstream: echo
  route: {method: GET, path: /echo/held-open}
  forward: {path: /v1/slow/held-open, headers: [X-Gate]}
  scopes: [echo:read]
  tier: green
  idempotency: none
  timeout_ms: 60000
  input_schema: {type: object}
"""
# Events of a held call that mean an approver's decision let it go ahead.
GO_AHEAD = frozenset({"approved", "executing", "executed", "failed", "outcome_unknown"})


@dataclass(frozen=True)
class Break:
    """One way to take the audit file from under the gateway, and what it must then say."""

    name: str
    refuses: bool          # nothing can be written until the test undoes it: 503s meanwhile
    event: str             # the `audit` record that says what happened
    reason: str | None
    error: str | None      # why writes failed meanwhile
    loses: bool            # the path no longer holds the records before: the chain there
                           # starts with a gap, closed by the file the test kept


BREAKS = [Break("deleted", False, "reopened", "missing", None, True),
          Break("renamed", False, "reopened", "missing", None, True),
          Break("directory", True, "reopened", "replaced", "EISDIR", True),
          Break("replaced", False, "reopened", "replaced", None, True),
          Break("truncated", False, "reopened", "truncated", None, True),
          Break("unwritable", True, "recovered", None, "EPERM", False)]


def inflict(brk: Break, live: Path, aside: Path, undo: contextlib.ExitStack) -> Path | None:
    """Do it. Returns the file that holds the records taken from the path: the renamed file,
    or a copy the test made just before, as an operator's backup would be (a copy, not a
    link: a record written to the old file after it was taken is lost, as it would be)."""
    aside.mkdir()
    kept = aside / f"{brk.name}.jsonl"
    match brk.name:
        case "deleted":
            shutil.copyfile(live, kept)
            live.unlink()
        case "renamed":
            kept = live.with_name(f"{live.name}.1")
            live.rename(kept)
        case "directory":
            shutil.copyfile(live, kept)
            live.unlink()
            live.mkdir()
            undo.callback(_remove_directory, live)
        case "replaced":
            other = live.with_name("replacement.tmp")
            other.write_bytes(b"")
            shutil.copyfile(live, kept)
            other.replace(live)
        case "truncated":
            shutil.copyfile(live, kept)
            os.truncate(live, 0)
        case "unwritable":
            undo.enter_context(unwritable(live))
            return None
    return kept


def _remove_directory(path: Path) -> None:
    if path.is_dir():
        path.rmdir()


def files_on_disk(directory: Path, *more: Path | None) -> list[Path]:
    """Every record file under `directory` (rotated, renamed or live; not the lock file),
    and the files in `more` — what a test put aside before it took them from the path."""
    found = [p for p in sorted(directory.rglob("*"))
             if p.is_file() and not p.name.startswith(".")]
    return found + [p for p in more if p is not None and p not in found]


def read(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record of the files, in chain order (by `seq`)."""
    out = [json.loads(line) for path in paths for line in path.read_bytes().splitlines()]
    return sorted(out, key=lambda r: int(r["seq"]))


def lines_of(path: Path) -> list[dict[str, Any]]:
    """A file's records as written, line 1 first."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def unrecorded(seen: Sequence[Seen], queue: Sequence[Mapping[str, Any]],
               records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every action the gateway took that the records on disk do not account for: a request
    the upstream received (matched by its `X-Request-Id`, the call's `decision_id`) with
    no decision record — or, for an approved held call, no `approved` record; a call in
    the queue with no decision or `queued` record; a held call let go ahead with no
    `approved` record; an outcome record with no decision record before it."""
    decided: set[str] = set()
    queued: set[str] = set()
    approved: set[str] = set()
    problems = []
    for r in records:   # in chain order: a record must come after what it follows from
        if r["kind"] == "decision":
            decided.add(r["decision_id"])
        elif r["kind"] == "outcome" and r["decision_id"] not in decided:
            problems.append(f"outcome of {r['decision_id']} without its decision before it")
        elif r["kind"] == "approval" and r.get("event") == "queued":
            queued.add(r["approval_id"])
        elif r["kind"] == "approval" and r.get("event") == "approved":
            approved.add(r["approval_id"])
    held = {a["decision_id"]: a for a in queue}
    for s in seen:
        request_id = s.headers.get("X-Request-Id", "")
        if request_id not in decided:
            problems.append(f"{s.raw_path} ({request_id}) reached the upstream unrecorded")
        if request_id in held and held[request_id]["id"] not in approved:
            problems.append(f"{held[request_id]['id']} was sent with no approved record")
    for a in queue:
        if a["decision_id"] not in decided or a["id"] not in queued:
            problems.append(f"{a['id']} is in the queue unrecorded")
        if a["status"] in GO_AHEAD and a["id"] not in approved:
            problems.append(f"{a['id']} is {a['status']} with no approved record")
    return problems


def refused_start(gw: Gateway) -> tuple[int, list[str]]:
    """Start a gateway that must not start: its exit code and the lines it printed."""
    offset = gw.log_file.stat().st_size if gw.log_file.exists() else 0
    try:
        gw.start()
    except RuntimeError:   # what the harness raises when `serve` exits
        pass
    else:
        gw.stop()
        raise AssertionError(f"the gateway started:\n{gw.log()}")
    assert gw.proc is not None
    code = gw.proc.wait(30)
    text = gw.log_file.read_bytes()[offset:].decode(errors="replace")
    return code, text.splitlines()
