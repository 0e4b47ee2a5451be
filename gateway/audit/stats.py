"""The report's arithmetic: UTC periods, nearest-rank percentiles, rates, and the
counters kept per (period, tool) (`Stats`)."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

ACTIONS = ("allow", "require_approval", "deny")
FINAL = ("approved", "rejected", "expired")


def period_of(ts: str | None, period: str) -> str:
    """The UTC bucket of a `ts`: `2026-12-02T22:00Z`, `2026-12-02`, `2026-W49`,
    `2026-12` or `all`."""
    if period == "all" or ts is None:
        return "all" if period == "all" else "unknown"
    if period == "week":
        return _week(ts[:10])
    return ts[:13] + ":00Z" if period == "hour" else ts[:10] if period == "day" else ts[:7]


@lru_cache(maxsize=4096)
def _week(day: str) -> str:
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def nearest_rank(ordered: Sequence[float], p: float) -> float | None:
    """The p-th percentile of sorted samples, nearest-rank."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p * len(ordered) / 100) - 1)]


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _spread(samples: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"count": len(ordered), "p50": nearest_rank(ordered, 50),
            "p95": nearest_rank(ordered, 95)}


@dataclass(slots=True)
class Stats:
    """The numbers of one (period, tool)."""

    calls: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    shadow: int = 0
    validity: Counter[str] = field(default_factory=Counter)     # valid, invalid, unchecked
    forwarded: int = 0
    succeeded: int = 0
    post_checked: int = 0
    post_passed: int = 0
    approvals: Counter[str] = field(default_factory=Counter)    # FINAL, and pending
    waits_s: array[float] = field(default_factory=lambda: array("d"))
    fallback_ms: array[float] = field(default_factory=lambda: array("d"))
    denials: Counter[str] = field(default_factory=Counter)
    policy_denials: Counter[str] = field(default_factory=Counter)
    spend: dict[str, Counter[str]] = field(default_factory=dict)  # run -> currency -> sum

    def merge(self, other: Stats) -> None:
        for name in ("calls", "shadow", "forwarded", "succeeded", "post_checked",
                     "post_passed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("actions", "validity", "approvals", "denials", "policy_denials"):
            getattr(self, name).update(getattr(other, name))
        self.waits_s.extend(other.waits_s)
        self.fallback_ms.extend(other.fallback_ms)
        for run, spent in other.spend.items():
            self.spend.setdefault(run, Counter()).update(spent)

    def as_dict(self) -> dict[str, Any]:
        decided = sum(self.approvals[f] for f in FINAL)
        valid, invalid = self.validity["valid"], self.validity["invalid"]
        return {
            "calls": self.calls, "actions": {**dict.fromkeys(ACTIONS, 0), **self.actions},
            "shadow": self.shadow,
            "validity": {"valid": valid, "invalid": invalid, "checked": valid + invalid,
                         "unchecked": self.validity["unchecked"],
                         "rate": _rate(valid, valid + invalid)},
            "success": {"forwarded": self.forwarded, "succeeded": self.succeeded,
                        "rate": _rate(self.succeeded, self.forwarded)},
            "postcondition": {"passed": self.post_passed, "checked": self.post_checked,
                              "rate": _rate(self.post_passed, self.post_checked)},
            "approvals": {**{f: self.approvals[f] for f in FINAL},
                          "pending": self.approvals["pending"], "decided": decided,
                          "rate": _rate(self.approvals["approved"], decided),
                          "wait_s": _spread(self.waits_s)},
            "fallback_ms": _spread(self.fallback_ms),
            "denials": dict(self.denials.most_common()),
            "policy_denials": dict(self.policy_denials.most_common()),
            "spend_per_run": self._spend(),
        }

    def _spend(self) -> dict[str, Any]:
        runs = len(self.spend)
        currencies: dict[str, dict[str, float]] = {}
        for name in sorted({c for spent in self.spend.values() for c in spent}):
            amounts = [spent[name] for spent in self.spend.values() if name in spent]
            currencies[name] = {"total": sum(amounts), "mean": sum(amounts) / runs,
                                "max": max(amounts)}
        return {"runs": runs, "currencies": currencies}
