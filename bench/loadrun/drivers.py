"""The load generators: wrk for saturation, staggered hey processes for fixed rates.

`max`: `wrk -t1 -c<conns>` with `bench/lua/scenario.lua`, which counts every answer by
status and prints one RESULT line. `rateN`: N req/s offered by ceil(N/100) `hey -c1 -q`
processes, each one connection, started 1/N s apart: one `hey -c10` fires its ten workers
at the same instant, which inflated latency 2-3x in the peers' runs (shared/peers/README).
Each hey writes its answers as CSV; hey does not list requests that failed at the socket,
so for hey those show only as a lower achieved rate (`sockerr` is None).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadrun.procs import Processes, RunError

LUA = Path(__file__).resolve().parents[1] / "lua" / "scenario.lua"
PER_HEY = 100     # req/s one single-connection hey process is asked for, at most
SLACK_S = 30      # how long past its duration a load generator may take before it is stopped


@dataclass(frozen=True)
class Load:
    """What a load generator saw in one run."""

    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    statuses: Mapping[int, int]
    sockerr: int | None        # None: the generator cannot tell (hey)
    replayed: int | None       # answers with `Idempotent-Replayed: true`; None: not seen


def wrk(procs: Processes, url: str, env: Mapping[str, str], duration_s: int, conns: int,
        out: Path) -> Load:
    proc = procs.start(["wrk", "-t1", f"-c{conns}", f"-d{duration_s}s", "--timeout", "10s",
                        "-s", str(LUA), url], out=out, env=env)
    status = procs.wait(proc, duration_s + SLACK_S)
    text = out.read_text(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if status != 0 or line is None:
        raise RunError(f"wrk exited with {status} and no RESULT line:\n{text[-2000:]}")
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    statuses = {int(code): int(n) for code, n in
                (pair.split(":") for pair in fields["statuses"].split(",") if pair)}
    return Load(int(fields["requests"]), float(fields["rps"]), float(fields["p50_ms"]),
                float(fields["p90_ms"]), float(fields["p99_ms"]), statuses,
                int(fields["sockerr"]), int(fields["replayed"]))


def hey(procs: Processes, url: str, body: Path, headers: Mapping[str, str], rate: int,
        duration_s: int, out: Path) -> Load:
    n = max(1, math.ceil(rate / PER_HEY))
    argv = ["hey", "-z", f"{duration_s}s", "-c", "1", "-q", f"{rate / n:g}", "-t", "10",
            "-o", "csv", "-m", "POST", "-T", "application/json", "-D", str(body)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    parts = [out.with_name(f"{out.name}.{i}") for i in range(n)]
    started = []
    for part in parts:
        started.append(procs.start([*argv, url], out=part))
        time.sleep(1 / rate)
    failed = [p.args for p in started if procs.wait(p, duration_s + SLACK_S) != 0]
    if failed:
        raise RunError(f"hey exited non-zero: {failed[0]}")
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    for part in parts:
        for line in part.read_text(errors="replace").splitlines():
            # response-time(s),DNS+dialup,DNS,Request-write,Response-delay,Response-read,
            # status-code,offset; the header line and anything else is skipped
            cols = line.split(",")
            if len(cols) == 8 and cols[0][:1].isdigit():
                latencies.append(float(cols[0]) * 1000)
                statuses[int(cols[6])] += 1
    latencies.sort()
    return Load(len(latencies), len(latencies) / duration_s, _rank(latencies, 50),
                _rank(latencies, 90), _rank(latencies, 99), dict(statuses), None, None)


def _rank(sorted_ms: list[float], pct: int) -> float:
    """Nearest-rank percentile; NaN for no samples."""
    if not sorted_ms:
        return math.nan
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(pct / 100 * len(sorted_ms)) - 1))]
