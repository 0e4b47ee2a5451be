"""The load benchmark's short form, `bench/load.py --quick`, run as a real subprocess: every
scenario measured in every mode, each answered as it must be (a 403 for deny, a 202 and an
approval for hold, a stored answer for replay), every pipeline stage timed, and nothing left
running. How fast any of it went is never asserted: timings belong to the benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("allow", "deny", "hold", "replay")
STAGES = ("authenticate", "killswitch", "scopes", "idempotency", "validate", "plan", "usage",
          "policy", "commit", "decision_record")
MISSING = [t for t in ("wrk", "hey") if shutil.which(t) is None] + (
    [] if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK) else ["nginx"])

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (Debian: apt-get install wrk "
                          "hey nginx; .ci/run installs them)")


def test_a_quick_load_run_measures_every_scenario_answered_as_expected(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / "load.py"), "--quick",
                              "--json", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = bench.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the bench then stops nginx and the gateway it started,
        # which run in sessions of their own.
        bench.terminate()
        stdout, stderr = bench.communicate(timeout=30)
        pytest.fail(f"the quick bench did not finish in 100 s: {stderr[-4000:]}")
    assert bench.returncode == 0, stdout[-4000:] + stderr[-4000:]
    result = orjson.loads(out.read_bytes())
    assert result["failure"] is None
    assert result["left_running"] == []
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True,
                        timeout=10, check=True).stdout.splitlines()
    assert [p for p in ps if result["workdir"] in p and not p.startswith("Z")] == []

    runs = {(r["mode"], r["scenario"], r["target"]): r for r in result["runs"]}
    modes = result["modes"]
    assert "max" in modes and any(m.startswith("rate") for m in modes)
    assert set(runs) == ({(m, "allow", "direct") for m in modes}
                         | {(m, s, "gateway") for m in modes for s in SCENARIOS})
    for key, r in runs.items():
        assert r["requests"] > 0, key
        assert r["unexpected"] == 0, (key, r["statuses"])
        assert r["errors"] == 0, (key, r)
        assert sum(r["statuses"].values()) == r["requests"], key

    for mode in modes:
        allow, deny, hold, replay = (runs[mode, s, "gateway"] for s in SCENARIOS)
        # At the end of a saturation run up to one call per connection is still in flight:
        # it reaches nginx (or the store) without being counted by wrk.
        assert allow["forwarded"] >= allow["requests"]
        assert deny["statuses"] == {"403": deny["requests"]}
        assert deny["forwarded"] == 0
        assert hold["statuses"] == {"202": hold["requests"]}
        assert hold["approvals"] >= hold["requests"]     # one approval row per 202
        assert hold["forwarded"] == 0
        assert replay["forwarded"] == 0                   # every answer came from the store
        if replay["replayed"] is not None:                # wrk sees the header; hey cannot
            assert replay["replayed"] == replay["requests"]
        for stage in STAGES:
            assert allow["stages"][stage]["count"] > 0, (mode, stage)
            assert allow["stages"][stage]["mean_us"] > 0, (mode, stage)
        assert replay["stages"]["validate"]["count"] == 0   # answered before validation
