"""Both engines decide alike (DESIGN §2.2): the shipped policy, evaluated by the embedded
engine (regorus) and by the real OPA engine (OPA's Go engine, opa-golib-python-bindings),
gives the identical decision document — action, reasons word for word, approval settings —
on a generated corpus of inputs. OPA's coverage report proves the corpus reaches every
line of the policy that can be evaluated.

The corpus is seeded (so a difference reproduces) and is run against the shipped data and
variants a security team would write: a number cap instead of per-currency caps, an
autonomy ramp, approval settings, a malformed limit, another tenant argument.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy.embedded import UNDEFINED, compile_engine, evaluate_json
from gateway.policy.sources import PolicySources, load_sources
from tests.e2e.opa import HAVE_OPA

pytestmark = pytest.mark.skipif(not HAVE_OPA, reason="the real OPA engine is not installed "
                                "(opa-golib-python-bindings: see the README)")

ROOT = Path(__file__).resolve().parent.parent.parent
PER_VARIANT = 400
SEED = 20261203
TOOLS = ["create_refund_request", "add_credit", "get_order", "add_ticket_note",
         "change_payroll_bank", "odd_limit", "unknown_tool", ""]
TIERS: list[Any] = ["green", "yellow", "red", "purple", "", None, 3]
TENANTS: list[Any] = ["acme", "globex", "", None, 7]
AMOUNTS: list[Any] = [0, 1, 99.5, 100, 100.01, 160, 180, 199.99, 200, 200.5, 250, 1e6, -5,
                      "250", None, True, [], {"n": 1}]
CURRENCIES: list[Any] = ["USD", "EUR", "GBP", "JPY", "usd", "", None, 840]


def variants(shipped: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "shipped", shipped
    data = copy.deepcopy(shipped)
    limits = data["toolgate"]["limits"]
    limits["create_refund_request"]["auto_percent"] = 35
    limits["add_credit"] = {"argument": "amount", "max": 100, "approvals_required": 2,
                            "approver_roles": ["finance", "cfo"], "auto_percent": 50}
    limits["odd_limit"] = {"argument": "amount", "max": "lots"}   # a malformed entry
    yield "ramp and number caps", data
    other = copy.deepcopy(data)
    other["toolgate"]["tenant_argument"] = "org"
    yield "another tenant argument", other
    unset = copy.deepcopy(data)
    del unset["toolgate"]["tenant_argument"]
    yield "no tenant argument", unset


def random_input(rng: random.Random) -> dict[str, Any]:
    """An input shaped as the gateway builds it (DESIGN §2.2), with hostile values in any
    field a caller or a spec author controls; sometimes a field is missing altogether."""
    def some(values: list[Any]) -> Any:
        return rng.choice(values)

    args: dict[str, Any] = {}
    for name, values in (("tenant_id", TENANTS), ("org", TENANTS), ("amount", AMOUNTS),
                         ("currency", CURRENCIES)):
        if rng.random() < 0.7:
            args[name] = some(values)
    doc: dict[str, Any] = {
        "tool": {"name": some(TOOLS), "tier": some(TIERS), "scopes": ["billing:refund"],
                 "upstream": "billing", "mode": some(["enforce", "shadow"])},
        "args": args,
        "principal": {"sub": "agent", "agent": "bot", "tenant": some(TENANTS),
                      "scopes": ["billing:refund"], "roles": [], "claims": {}},
        "run": {"id": "run-1", "tool_calls": rng.randrange(0, 20), "calls_per_tool": {},
                "spent": {"USD": rng.choice([0, 150.5])}},
        "request": {"id": "req", "method": "POST", "path": "/billing/refunds",
                    "idempotency_key": "k", "time": "2026-12-03T00:00:00Z",
                    "source_ip": "127.0.0.1", "entrance": some(["rest", "mcp"]),
                    "bucket": some([0, 1, 34, 35, 49, 50, 99, rng.randrange(100), "7"])},
    }
    if rng.random() < 0.05:
        del doc["principal"]["tenant"]
    if rng.random() < 0.05:
        del doc["tool"]["tier"]
    if rng.random() < 0.05:
        del doc["request"]["bucket"]
    return doc


def corpus() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    shipped = load_sources([ROOT / "policies"])
    rng = random.Random(SEED)  # noqa: S311 (a reproducible corpus, not a secret)
    return [(name, data, random_input(rng))
            for name, data in variants(dict(shipped.data)) for _ in range(PER_VARIANT)]


def opa_decisions(sources: PolicySources, data: dict[str, Any],
                  inputs: list[dict[str, Any]], covered: set[int],
                  uncovered: set[int]) -> list[Any]:
    from opa_bindings import OpaEngine, OpaUndefinedError  # noqa: PLC0415 (test-only)

    engine = OpaEngine()
    try:
        for name, text in sources.modules:
            engine.add_policy(name, text)
        engine.add_data(data)
        values = []
        for doc in inputs:
            try:
                values.append(engine.eval_document("toolgate.decision", doc, coverage=True))
            except OpaUndefinedError:
                values.append(UNDEFINED)
            for report in engine.last_coverage["files"].values():
                covered.update(r["start"]["row"] for r in report.get("covered") or [])
                uncovered.update(r["start"]["row"] for r in report.get("not_covered") or [])
        return values
    finally:
        engine.close()


def embedded_decisions(sources: PolicySources, data: dict[str, Any],
                       inputs: list[dict[str, Any]]) -> list[Any]:
    engine = compile_engine(PolicySources(sources.modules, data, sources.revision))
    return [evaluate_json(engine, "data.toolgate.decision", orjson.dumps(doc).decode())
            for doc in inputs]


def test_both_engines_give_identical_decisions_on_every_input() -> None:
    sources = load_sources([ROOT / "policies"])
    cases = corpus()
    assert len(cases) >= 1000
    covered: set[int] = set()
    uncovered: set[int] = set()
    differences = []
    actions: dict[str, int] = {}
    reasons: set[str] = set()
    by_variant: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for name, data, doc in cases:
        by_variant.setdefault(name, []).append((data, doc))
    for name, pairs in by_variant.items():
        data = pairs[0][0]
        inputs = [doc for _, doc in pairs]
        expected = opa_decisions(sources, data, inputs, covered, uncovered)
        got = embedded_decisions(sources, data, inputs)
        for doc, opa, embedded in zip(inputs, expected, got, strict=True):
            if opa != embedded:
                differences.append((name, doc, opa, embedded))
            if isinstance(opa, dict):
                actions[opa["action"]] = actions.get(opa["action"], 0) + 1
                reasons.update(r.split(":", 1)[0] for r in opa["reasons"])
    assert differences == [], differences[:3]
    # The corpus reaches every action and every reason the policy can give (its fail-closed
    # default, `no_decision`, is for a policy edited into a gap: no input reaches it now)…
    assert set(actions) == {"allow", "require_approval", "deny"}
    assert reasons == {"green_tier", "within_limit", "autonomy_ramp", "red_tier",
                       "unknown_tier", "tenant_mismatch", "tenant_missing", "no_limit",
                       "invalid_argument", "unlisted_currency", "over_limit",
                       "limit_unchecked"}
    # …and, by OPA's own coverage report, every line of the policy but that default.
    [(_, text)] = sources.modules
    default = next(number for number, line in enumerate(text.splitlines(), 1)
                   if line.startswith("default decision :="))
    assert uncovered - covered == {default}
