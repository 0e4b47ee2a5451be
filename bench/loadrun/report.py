"""One measured run as a record, and the tables and JSON made of all of them.

A run's errors are the answers its scenario did not expect (a 403 is right for deny, a 202
for hold, and for replay only an answer marked `Idempotent-Replayed: true` is right), calls
that reached nginx although the scenario forwards none (deny, hold, replay), and socket
errors. The ratios compare each gateway row with the direct row of the same mode:
the same body, sent straight to nginx, is the only baseline a gateway call has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.loadrun.drivers import Load
from bench.loadrun.stages import TOTALS, Timing

DIRECT, GATEWAY = "direct", "gateway"


@dataclass(frozen=True)
class Row:
    mode: str                   # max | rate<N>
    scenario: str
    target: str                 # DIRECT | GATEWAY
    duration_s: int
    load: Load
    expected: frozenset[int]
    must_replay: bool
    must_not_forward: bool      # deny, hold, replay: a call that reached nginx is an error
    cpu_s: float                # CPU of the target's process tree during the run
    rss_mib: float              # the tree's resident memory, largest sample during the run
    hwm_mib: float              # the largest VmHWM of one of its processes, after the run
    forwarded: int              # requests nginx answered during the run
    approvals: int | None       # approval rows the run added to the store (SQLite only)
    stages: dict[str, Timing] = field(default_factory=dict)

    @property
    def unexpected(self) -> int:
        wrong = sum(n for code, n in self.load.statuses.items() if code not in self.expected)
        if self.must_replay and self.load.replayed is not None:
            wrong += self.load.requests - wrong - self.load.replayed   # right status, no replay
        return wrong

    @property
    def leaked(self) -> int:
        """Calls that reached the upstream although none of this scenario's may."""
        return self.forwarded if self.must_not_forward else 0

    @property
    def errors(self) -> int:
        return self.unexpected + self.leaked + (self.load.sockerr or 0)

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.load.requests * 1e6 if self.load.requests else math.nan

    def to_json(self, direct: Row | None) -> dict[str, Any]:
        out = {"mode": self.mode, "scenario": self.scenario, "target": self.target,
               "duration_s": self.duration_s, "requests": self.load.requests,
               "rps": self.load.rps, "p50_ms": self.load.p50_ms, "p90_ms": self.load.p90_ms,
               "p99_ms": self.load.p99_ms,
               "statuses": {str(k): v for k, v in sorted(self.load.statuses.items())},
               "expected_statuses": sorted(self.expected), "unexpected": self.unexpected,
               "sockerr": self.load.sockerr, "errors": self.errors,
               "replayed": self.load.replayed, "forwarded": self.forwarded,
               "leaked": self.leaked, "approvals": self.approvals,
               "cpu_s": self.cpu_s, "cpu_us_per_call": self.cpu_us_per_call,
               "rss_mb": self.rss_mib, "peak_rss_mb": self.hwm_mib,
               "stages": {name: {"count": t.count, "mean_us": t.mean_us}
                          for name, t in self.stages.items()}}
        if direct is not None:
            out["vs_direct"] = {"rps": _ratio(self.load.rps, direct.load.rps),
                                "p50": _ratio(self.load.p50_ms, direct.load.p50_ms)}
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else None


def baseline(rows: Iterable[Row], row: Row) -> Row | None:
    """The direct row of `row`'s mode, for a gateway row."""
    if row.target == DIRECT:
        return None
    return next((r for r in rows if r.target == DIRECT and r.mode == row.mode), None)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def table(rows: Sequence[Row]) -> str:
    head = (f"{'mode':<9}{'scenario':<9}{'target':<9}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}"
            f"{'p99 ms':>9}{'errors':>7}{'cpu µs/call':>12}{'RSS MB':>8}{'peak MB':>8}"
            f"{'req/s÷direct':>13}{'p50÷direct':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        base = baseline(rows, r)
        lines.append(
            f"{r.mode:<9}{r.scenario:<9}{r.target:<9}{r.load.rps:>8.0f}{r.load.p50_ms:>9.2f}"
            f"{r.load.p90_ms:>9.2f}{r.load.p99_ms:>9.2f}{r.errors:>7}{r.cpu_us_per_call:>12.0f}"
            f"{r.rss_mib:>8.1f}{r.hwm_mib:>8.1f}"
            f"{_x(_ratio(r.load.rps, base.load.rps) if base else None):>13}"
            f"{_x(_ratio(r.load.p50_ms, base.load.p50_ms) if base else None):>11}")
    return "\n".join(lines)


def stage_table(rows: Sequence[Row]) -> str:
    """Per mode: a row per stage, a column per scenario, mean µs per observation."""
    blocks = []
    for mode in dict.fromkeys(r.mode for r in rows if r.stages):
        runs = [r for r in rows if r.mode == mode and r.stages]
        seen = dict.fromkeys(n for r in runs for n, t in r.stages.items() if t.count)
        totals = [name for _, name in TOTALS if name in seen]
        names = [n for n in seen if n not in totals] + totals   # the stages, then the whole
        head = f"{mode + ': µs/call':<20}" + "".join(f"{r.scenario:>10}" for r in runs)
        lines = [head, "-" * len(head)]
        for name in names:
            cells = (r.stages.get(name, Timing(0, 0.0)).mean_us for r in runs)
            lines.append(f"{name:<20}" + "".join("-".rjust(10) if us is None else f"{us:>10.0f}"
                                                  for us in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
