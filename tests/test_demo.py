"""The demo: it logs as `toolgate serve` does (exceptions without their messages), runs on
the shipped specs and policies from any directory, and prints the transcript the README
quotes, counts included (`check_transcript`, also used by tests/test_wheel.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import demo
from tests.e2e.harness import toolgate_command


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_demo_never_logs_an_exception_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        root_logging: None) -> None:
    def fail() -> None:
        raise ValueError("Authorization: Bearer eyJ-canary")

    def run(coro: Coroutine[Any, Any, int]) -> int:
        coro.close()
        try:
            fail()
        except ValueError:
            logging.getLogger("toolgate").exception("the gateway failed")
        return 0

    monkeypatch.setattr(demo.uvloop, "run", run)
    assert demo.run_demo(tmp_path / "demo") == 0
    err = capsys.readouterr().err
    assert "the gateway failed" in err and "ValueError" in err
    assert "eyJ-canary" not in err


# The table the demo prints: (call, status, outcome), one row per scripted call.
ROWS = [
    ("look up a customer (green)", 200, "FORWARDED"),
    ("read an order (green)", 200, "FORWARDED"),
    ("add a ticket note (green)", 201, "FORWARDED"),
    ("refund $120 (yellow, within limit)", 201, "FORWARDED"),
    ("refund $250 (yellow, over $200)", 202, "QUEUED for approval"),
    ("refund without amount", 422, "SCHEMA REJECTED"),
    ("refund without Idempotency-Key", 400, "KEY REQUIRED"),
    ("refund by a read-only agent", 403, "SCOPE REJECTED"),
    ("look up another tenant's customer", 403, "POLICY DENIED"),
    ("change payroll bank account (red)", 403, "POLICY DENIED"),
    ("call an undeclared admin API", 403, "TOOL NOT ALLOWED"),
    ("call with an expired token", 401, "UNAUTHENTICATED"),
]
# The README's transcript says these: a change here is a change to paste there.
AUDIT_KINDS = ("4 approval records, 2 audit records, 13 decision records, "
               "5 outcome records")
AUDIT_RECORDS = 24


def check_transcript(out: str, directory: Path) -> None:
    """What `toolgate demo --dir DIRECTORY` printed shows allow, queue, approve, deny and
    replay, with the counts the README quotes. Ports, ids, times and hashes vary."""
    lines = out.splitlines()
    assert re.fullmatch(r"example upstream \(stand-in for CRM/billing/HR APIs\): "
                        r"http://127\.0\.0\.1:\d+", lines[0]), lines[0]
    assert re.fullmatch(r"gateway:  http://127\.0\.0\.1:\d+   admin: http://127\.0\.0\.1:\d+",
                        lines[1]), lines[1]
    assert lines[2] == f"config:   {directory / 'toolgate.yaml'}"
    assert lines[4] == f"{'#':>2}  {'call':<38} {'status':>6}  {'outcome':<20} detail"
    table = [re.fullmatch(r"(..)  (.{38}) (.{6})  (.{20}) ?.*", line) for line in lines[5:17]]
    assert all(table), lines[5:17]
    assert [(int(m[1]), m[2].rstrip(), int(m[3]), m[4].rstrip()) for m in table if m] == [
        (i, *row) for i, row in enumerate(ROWS, 1)]
    assert lines[17] == ""
    # queued -> approved through the CLI -> executed once -> polled -> replayed, not re-sent
    assert re.search(r"^\$ toolgate approvals approve apr_[0-9a-f]{32} "
                     r"--comment 'damaged on arrival'$", out, re.MULTILINE)
    assert "\n  status       executed\n" in out
    assert re.search(r"^the agent polls /v1/approvals/apr_[0-9a-f]{32}: status=executed, "
                     r"upstream answered 201 \{\"refund_id\":", out, re.MULTILINE)
    assert ("the agent retries with the same Idempotency-Key: 201, Idempotent-Replayed: true "
            "(not sent upstream again)") in lines
    audit = directory / "audit" / "toolgate.jsonl"
    assert f"audit log: {audit}  ({AUDIT_KINDS})" in lines
    records = audit.read_text(encoding="utf-8").splitlines()
    assert len(records) == AUDIT_RECORDS
    head = json.loads(records[-1])["hash"]
    assert lines[-2:] == [
        f"$ toolgate audit verify {audit}",
        f"  ok: {AUDIT_RECORDS} records in 1 files, seq 1..{AUDIT_RECORDS}, head {head}"]


def test_the_demo_prints_what_the_readme_says(tmp_path: Path) -> None:
    """Run as the README runs it, from a directory that is not the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    result = subprocess.run([*toolgate_command(), "demo", "--dir", str(tmp_path / "demo")],
                            cwd=tmp_path, env=env, text=True, capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    check_transcript(result.stdout, tmp_path / "demo")


def test_the_demo_runs_on_the_shipped_specs_wherever_it_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_root: Path) -> None:
    # A directory of someone's own specs and policies is not what the scripted calls are for.
    (tmp_path / "tool_specs").mkdir()
    (tmp_path / "policies").mkdir()
    monkeypatch.chdir(tmp_path)
    assert demo.shipped_root() == repo_root  # this checkout: no gateway/_shipped in it
