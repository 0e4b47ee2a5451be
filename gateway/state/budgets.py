"""Run budgets (DESIGN §6): limits from config, and the pure check a store runs atomically.

A run is `(tenant, run_id)`; its usage is the number of forwarded calls, the calls per
tool, and the spend per spend-argument name (a tool spec's `spend: amount` makes each call
add its `amount`). The store reserves inside one transaction: it reads the run's usage,
calls `check_reservation`, and writes the new usage, so concurrent calls — on any replica —
can never overshoot. Only a call known never to have run (nothing was sent) is given back
(`release`); a timeout or an upstream error keeps its spend, since the upstream may have
acted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.errors import BudgetExceeded, InvalidArguments

ZERO_TOLERANCE = 1e-9  # spend is summed in floats; a cap is not overshot by rounding


@dataclass(frozen=True)
class Limits:
    max_tool_calls: int | None = None
    max_calls_per_tool: Mapping[str, int] = field(default_factory=dict)  # "default" key
    max_spend: Mapping[str, float] = field(default_factory=dict)

    def per_tool(self, tool: str) -> int | None:
        return self.max_calls_per_tool.get(tool, self.max_calls_per_tool.get("default"))

    @property
    def empty(self) -> bool:
        return (self.max_tool_calls is None and not self.max_calls_per_tool
                and not self.max_spend)


@dataclass(frozen=True)
class BudgetSettings:
    default: Limits = field(default_factory=Limits)
    tenants: Mapping[str, Limits] = field(default_factory=dict)

    def for_tenant(self, tenant: str | None) -> Limits:
        """The tenant's override merged over the defaults, key by key."""
        override = self.tenants.get(tenant or "")
        if override is None:
            return self.default
        return Limits(
            max_tool_calls=(override.max_tool_calls if override.max_tool_calls is not None
                            else self.default.max_tool_calls),
            max_calls_per_tool={**self.default.max_calls_per_tool,
                                **override.max_calls_per_tool},
            max_spend={**self.default.max_spend, **override.max_spend})


@dataclass(frozen=True)
class Reservation:
    """One call counted against its run: the tool and what it spends, under `limits`."""

    tenant: str                      # "" for a principal without a tenant
    run_id: str
    tool: str
    spend: Mapping[str, float]
    limits: Limits


def spend_of(name: str | None, args: Mapping[str, Any]) -> dict[str, float]:
    """What a call spends: its `spend` argument (a tool spec's `spend: amount`).

    The spec loader requires that argument to be a required, non-negative number, and the
    schema has checked it; anything else here is refused rather than counted as nothing.
    """
    if name is None:
        return {}
    value = args.get(name)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise InvalidArguments(f"spend argument {name!r} must be a non-negative number")
    return {name: float(value)}


def reservation(budgets: BudgetSettings, tenant: str | None, run_id: str | None, tool: str,
                spend: Mapping[str, float]) -> Reservation | None:
    """The reservation a call makes, or None when its run has no budget to count against."""
    if run_id is None:
        return None
    limits = budgets.for_tenant(tenant)
    if limits.empty:
        return None
    return Reservation(tenant or "", run_id, tool, dict(spend), limits)


@dataclass
class Usage:
    tool_calls: int = 0
    per_tool: dict[str, int] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def as_input(self) -> dict[str, Any]:
        return {"tool_calls": self.tool_calls, "calls_per_tool": dict(self.per_tool),
                "spent": dict(self.spent)}


def check_reservation(usage: Usage, limits: Limits, tool: str,
                      spend: Mapping[str, float]) -> Usage:
    """The usage after one more call of `tool` spending `spend`, or `BudgetExceeded`."""
    if limits.max_tool_calls is not None and usage.tool_calls + 1 > limits.max_tool_calls:
        raise BudgetExceeded(f"the run has used its {limits.max_tool_calls} tool calls",
                             budget="max_tool_calls", limit=limits.max_tool_calls,
                             used=usage.tool_calls)
    per_tool = limits.per_tool(tool)
    used = usage.per_tool.get(tool, 0)
    if per_tool is not None and used + 1 > per_tool:
        raise BudgetExceeded(f"the run has used its {per_tool} calls of {tool}",
                             budget="max_calls_per_tool", limit=per_tool, used=used)
    spent = dict(usage.spent)
    for name, amount in spend.items():
        cap = limits.max_spend.get(name)
        total = spent.get(name, 0.0) + amount
        if cap is not None and total > cap + ZERO_TOLERANCE:
            raise BudgetExceeded(f"{name} {amount:g} would bring the run's spend to {total:g}, "
                                 f"over its cap of {cap:g}", budget=f"max_spend.{name}",
                                 limit=cap, used=spent.get(name, 0.0))
        spent[name] = total
    return Usage(usage.tool_calls + 1, {**usage.per_tool, tool: used + 1}, spent)


def usage_to_json(usage: Usage) -> str:
    return orjson.dumps({"tool_calls": usage.tool_calls, "per_tool": usage.per_tool,
                         "spent": usage.spent}).decode()


def usage_from_json(text: str | None) -> Usage:
    if not text:
        return Usage()
    raw = orjson.loads(text)
    return Usage(int(raw["tool_calls"]), {k: int(v) for k, v in raw["per_tool"].items()},
                 {k: float(v) for k, v in raw["spent"].items()})


def release(usage: Usage, spend: Mapping[str, float], tool: str) -> Usage:
    """Give back a call known never to have run (nothing was sent): neither its spend nor
    the call counts. A call that may have run (a timeout, an upstream error) keeps both."""
    spent = {k: max(0.0, v - spend.get(k, 0.0)) for k, v in usage.spent.items()}
    per_tool = dict(usage.per_tool)
    per_tool[tool] = max(0, per_tool.get(tool, 0) - 1)
    return Usage(max(0, usage.tool_calls - 1), per_tool, spent)
