"""The report's arithmetic: nearest-rank percentiles and UTC periods."""

from __future__ import annotations

from gateway.audit.stats import nearest_rank, period_of


def test_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 21)]
    assert nearest_rank(samples, 50) == 10.0
    assert nearest_rank(samples, 95) == 19.0
    assert nearest_rank([7.0], 95) == 7.0
    assert nearest_rank([], 50) is None


def test_period_of() -> None:
    ts = "2027-01-01T00:30:00.000000Z"   # ISO week 53 of 2026
    assert [period_of(ts, p) for p in ("hour", "day", "week", "month", "all")] == [
        "2027-01-01T00:00Z", "2027-01-01", "2026-W53", "2027-01", "all"]
