"""The soak run's short form: the same mix as `bench/soak.py`, for seconds instead of
minutes, so CI sees every kind of call answered as expected and recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_answers_and_records_every_call(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "4",
                          "--sample", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=90, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["unexpected"] == {}
    assert result["calls_without_a_decision"] == 0
    kinds = {"allow", "deny", "hold", "approve", "replay", "invalid", "bad_token", "malformed"}
    assert {k for k, n in result["calls"].items() if n > 0} >= kinds, result["calls"]
    assert result["malformed_requests_recorded"] == result["calls"]["malformed"]
