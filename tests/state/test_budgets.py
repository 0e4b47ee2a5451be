"""Run budgets, pure: limits per tenant, what a call spends, the check, the give-back."""

from __future__ import annotations

import pytest

from gateway.core.errors import BudgetExceeded, InvalidArguments
from gateway.state.budgets import (
    BudgetSettings,
    Limits,
    Usage,
    check_reservation,
    release,
    reservation,
    spend_of,
    usage_from_json,
    usage_to_json,
)

LIMITS = Limits(max_tool_calls=3, max_calls_per_tool={"default": 2, "refund": 1},
                max_spend={"amount": 100})


def test_a_tenant_override_replaces_defaults_key_by_key() -> None:
    budgets = BudgetSettings(LIMITS, {"acme": Limits(max_spend={"amount": 500})})
    acme = budgets.for_tenant("acme")
    assert (acme.max_tool_calls, acme.max_spend, acme.per_tool("refund")) == (
        3, {"amount": 500}, 1)
    assert budgets.for_tenant("globex") is LIMITS
    assert budgets.for_tenant(None) is LIMITS


@pytest.mark.parametrize(("args", "spend"), [
    ({"amount": 20}, {"amount": 20.0}), ({"amount": 2.5}, {"amount": 2.5}),
    ({"amount": 0}, {"amount": 0.0}),
])
def test_what_a_call_spends(args: dict[str, object], spend: dict[str, float]) -> None:
    assert spend_of("amount", args) == spend
    assert spend_of(None, args) == {}


def test_a_call_without_a_run_or_limits_reserves_nothing() -> None:
    budgets = BudgetSettings(LIMITS)
    assert reservation(budgets, "acme", None, "refund", {}) is None
    assert reservation(BudgetSettings(), "acme", "run", "refund", {}) is None
    made = reservation(budgets, None, "run", "refund", {"amount": 1.0})
    assert made is not None
    assert (made.tenant, made.run_id, made.tool, made.spend) == ("", "run", "refund",
                                                                 {"amount": 1.0})


def test_each_limit_refuses_with_its_name() -> None:
    usage = check_reservation(Usage(), LIMITS, "refund", {"amount": 60})
    with pytest.raises(BudgetExceeded) as per_tool:
        check_reservation(usage, LIMITS, "refund", {})
    assert per_tool.value.extra["budget"] == "max_calls_per_tool"
    with pytest.raises(BudgetExceeded) as spend:
        check_reservation(usage, LIMITS, "lookup", {"amount": 41})
    assert spend.value.extra["budget"] == "max_spend.amount"
    usage = check_reservation(usage, LIMITS, "lookup", {"amount": 40})  # exactly the cap
    usage = check_reservation(usage, LIMITS, "other", {})
    with pytest.raises(BudgetExceeded) as calls:
        check_reservation(usage, LIMITS, "other2", {})
    assert calls.value.extra["budget"] == "max_tool_calls"


def test_release_gives_back_a_call_that_never_ran() -> None:
    usage = Usage(2, {"refund": 2}, {"amount": 50.0})
    unsent = release(usage, {"amount": 20}, "refund")
    assert (unsent.tool_calls, unsent.per_tool, unsent.spent) == (1, {"refund": 1},
                                                                  {"amount": 30.0})
    assert release(Usage(), {"amount": 5}, "x") == Usage(0, {"x": 0}, {})


@pytest.mark.parametrize("value", [-1, -0.01, "20", True, None, float("nan"),
                                   float("inf")])
def test_a_spend_that_is_not_a_non_negative_number_is_refused(value: object) -> None:
    with pytest.raises(InvalidArguments):
        spend_of("amount", {"amount": value})


def test_usage_round_trips() -> None:
    usage = Usage(3, {"a": 2, "b": 1}, {"amount": 12.5})
    assert usage_from_json(usage_to_json(usage)) == usage
    assert usage_from_json(None) == Usage()
