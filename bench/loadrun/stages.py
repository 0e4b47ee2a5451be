"""Where a call's time goes inside the gateway, from its own Prometheus histograms.

`/metrics` on the admin port is scraped before and after a run; each histogram's delta sum
over delta count is the mean time per observation in that run alone. The stages come out in
the order the gateway exposes them (its pipeline order, then the decision record), so a
stage the gateway adds shows up here without a change to the bench.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.loadrun.targets import call

STAGE = "toolgate_stage_seconds"
# Whole-call histograms, shown under the stages: (metric, the row's name).
TOTALS = (("toolgate_policy_latency_seconds", "policy engine"),
          ("toolgate_gateway_overhead_seconds", "gateway overhead"),
          ("toolgate_upstream_latency_seconds", "upstream"))


@dataclass(frozen=True)
class Timing:
    count: int
    sum_s: float

    @property
    def mean_us(self) -> float | None:
        return self.sum_s / self.count * 1e6 if self.count else None


def scrape(admin_port: int) -> dict[str, Timing]:
    """Each stage by name, and each of `TOTALS` by its row name (summed over tools)."""
    text = call(admin_port, "GET", "/metrics").body.decode()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    names = dict(TOTALS)
    for family in text_string_to_metric_families(text):
        if family.name != STAGE and family.name not in names:
            continue
        for sample in family.samples:
            row = sample.labels["stage"] if family.name == STAGE else names[family.name]
            if sample.name.endswith("_sum"):
                sums[row] = sums.get(row, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[row] = counts.get(row, 0) + int(sample.value)
    return {row: Timing(counts.get(row, 0), sums.get(row, 0.0)) for row in sums}


def delta(before: Mapping[str, Timing], after: Mapping[str, Timing]) -> dict[str, Timing]:
    zero = Timing(0, 0.0)
    return {row: Timing(t.count - before.get(row, zero).count,
                        t.sum_s - before.get(row, zero).sum_s) for row, t in after.items()}
