"""`toolgate audit report` as printed: a table, `--json` or `--csv`
(`gateway.audit.report` computes the numbers)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.audit.query import Window
from gateway.audit.report import ALL_TOOLS, report


def print_report(paths: list[Path], args: argparse.Namespace,
                 bad: Callable[[Path, int], None]) -> None:
    groups, totals = report(paths, bad, period=args.period,
                            window=Window.of(args.since, args.until), tools=args.tool)
    if args.json:
        window = Window.of(args.since, args.until)
        print(json.dumps({"period": args.period, "since": window.since,
                          "until": window.until, "files": [str(p) for p in paths],
                          "groups": groups, "totals": totals}, indent=2))
        return
    rows = _ordered(groups, totals)
    if args.csv:
        _csv(rows)
        return
    if not rows:
        print("no calls")
        return
    table: list[tuple[str, ...]] = [
        ("PERIOD", "TOOL", "CALLS", "VALID", "SUCCESS", "POST-COND", "APPROVED",
         "WAIT p50/p95", "FALLBACK p50/p95", "DENIALS", "SPEND PER RUN")]
    table += [_report_row(g) for g in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _ordered(groups: list[dict[str, Any]], totals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each period's tools, then its all-tools row when it has more than one tool."""
    out: list[dict[str, Any]] = []
    for total in totals:
        tools = [g for g in groups if g["period"] == total["period"]]
        out += tools + ([total] if len(tools) > 1 else [])
    return out


def _pct(part: dict[str, Any], num: str, den: str) -> str:
    rate = part["rate"]
    return "-" if rate is None else f"{rate * 100:.1f}% ({part[num]}/{part[den]})"


def _pair(spread: dict[str, Any], unit: Callable[[float], str]) -> str:
    return "-" if not spread["count"] else f"{unit(spread['p50'])} / {unit(spread['p95'])}"


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f}ms"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _report_row(g: dict[str, Any]) -> tuple[str, ...]:
    a = g["approvals"]
    denials = ", ".join(
        f"{code}={n}" + (" (" + ", ".join(f"{rule}={m}" for rule, m in
                                          g["policy_denials"].items()) + ")"
                         if code == "policy_denied" and g["policy_denials"] else "")
        for code, n in g["denials"].items())
    spend = g["spend_per_run"]
    spent = "; ".join(f"{cur} mean {s['mean']:g} max {s['max']:g}"
                      for cur, s in spend["currencies"].items())
    return (g["period"], g["tool"] if g["tool"] != ALL_TOOLS else "(all tools)",
            str(g["calls"]), _pct(g["validity"], "valid", "checked"),
            _pct(g["success"], "succeeded", "forwarded"),
            _pct(g["postcondition"], "passed", "checked"),
            _pct(a, "approved", "decided") + (f", {a['pending']} pending" if a["pending"]
                                              else ""),
            _pair(a["wait_s"], _seconds), _pair(g["fallback_ms"], lambda ms: f"{ms:g}ms"),
            denials or "-", _runs(spend["runs"], spent))


def _runs(runs: int, spent: str) -> str:
    return "-" if not runs else f"{runs} run{'s' if runs > 1 else ''}: {spent}"


def _csv(rows: list[dict[str, Any]]) -> None:
    """One row per (period, tool); nested numbers flattened (`validity_rate`,
    `denials_policy_denied`, `spend_per_run_currencies_amount_mean`); blank where a row has
    none."""
    flat = [dict(_flatten(g)) for g in rows]
    sections = list(rows[0]) if rows else []
    # Columns in the order of their sections; within one, as they first appear.
    columns = sorted(dict.fromkeys(k for row in flat for k in row),
                     key=lambda c: next(i for i, s in enumerate(sections)
                                        if c == s or c.startswith(s + "_")))
    writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)


def _flatten(value: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, item in value.items():
        if isinstance(item, Mapping):
            yield from _flatten(item, f"{prefix}{key}_")
        else:
            yield f"{prefix}{key}", item
