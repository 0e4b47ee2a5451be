"""The embedded engine: regorus evaluating the real shipped policies, and the ways a policy
can fail (syntax, undefined, wrong shape, runtime error) turning into deny/`policy_error`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.act.handle import handle
from gateway.core.decision import MAX_TTL_SECONDS, Action, PolicyDecision
from gateway.core.errors import LoadErrors
from gateway.devtokens import DevKey
from gateway.policy.embedded import EmbeddedEngine, compile_engine, error_location
from gateway.policy.sources import load_sources
from tests.support import FakeClock, Recorder, runtime, tool_call

QUERY = "data.toolgate.decision"


def call_input(name: str, tier: str, args: dict[str, Any], *,
               tenant: str | None = "acme") -> dict[str, Any]:
    """An input document shaped as in DESIGN §2.2."""
    return {
        "tool": {"name": name, "tier": tier, "scopes": ["billing:refund"],
                 "upstream": "billing", "mode": "enforce"},
        "args": args,
        "principal": {"sub": "svc-agent", "agent": "support-bot", "tenant": tenant,
                      "scopes": ["billing:refund"], "claims": {"iss": "https://idp"}},
        "run": {"id": "run-1", "tool_calls": 3, "spent": {"amount": 120.0}},
        "request": {"id": "req-1", "method": "POST", "path": "/billing/refunds",
                    "idempotency_key": "k-1", "time": "2025-01-01T00:00:00Z",
                    "source_ip": "10.0.0.1"},
    }


def refund(amount: Any, currency: str = "USD", tenant_id: str = "acme") -> dict[str, Any]:
    return call_input("create_refund_request", "yellow",
                      {"order_id": "o-1", "amount": amount, "currency": currency,
                       "tenant_id": tenant_id})


@pytest.fixture
def policies(repo_root: Path) -> Path:
    return repo_root / "policies"


@contextlib.asynccontextmanager
async def shipped_engine(policies: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = EmbeddedEngine(load_sources([policies]), QUERY, 1000)
    try:
        yield engine
    finally:
        await engine.close()


async def _shipped(policies: Path, input_doc: dict[str, Any]) -> PolicyDecision:
    async with shipped_engine(policies) as engine:
        return await engine.evaluate(input_doc)


async def _engine_for(tmp_path: Path, rego: str, query: str = QUERY) -> EmbeddedEngine:
    (tmp_path / "policy.rego").write_text(rego, encoding="utf-8")
    return EmbeddedEngine(load_sources([tmp_path]), query, 1000)


async def _evaluate_once(tmp_path: Path, rego: str, input_doc: dict[str, Any] | None = None,
                         ) -> PolicyDecision:
    engine = await _engine_for(tmp_path, rego)
    try:
        return await engine.evaluate(input_doc or call_input("get_order", "green", {}))
    finally:
        await engine.close()


def _assert_policy_error(decision: PolicyDecision, detail: str) -> None:
    assert decision.action is Action.DENY
    assert decision.reasons[0] == "policy_error"
    assert detail in decision.reasons[1]


# ---- The shipped policy ----------------------------------------------------------------

async def test_green_allow(policies: Path) -> None:
    decision = await _shipped(policies, call_input("get_order", "green", {"order_id": "o-1"}))
    assert decision == PolicyDecision(
        Action.ALLOW, ("green_tier: get_order is a green-tier tool and runs without approval",))


async def test_red_deny(policies: Path) -> None:
    decision = await _shipped(policies, call_input("change_payroll_bank", "red", {"account": "x"}))
    assert decision.action is Action.DENY
    assert decision.reasons == (
        "red_tier: change_payroll_bank is a red-tier tool and is never run by an agent",)


async def test_refund_250_usd_requires_approval(policies: Path) -> None:
    decision = await _shipped(policies, refund(250))
    assert decision == PolicyDecision(
        action=Action.REQUIRE_APPROVAL,
        reasons=("over_limit: amount 250 USD is over the 200 USD limit "
                 "for create_refund_request",),
        approvals_required=1,
        approver_roles=("billing-approver",),
        ttl_seconds=3600,
    )


async def test_refund_200_usd_allowed(policies: Path) -> None:
    decision = await _shipped(policies, refund(200))
    assert decision.action is Action.ALLOW
    assert decision.reasons == ("within_limit: amount 200 USD is within the 200 USD limit "
                                "for create_refund_request",)


async def test_refund_float_amount_just_over_limit(policies: Path) -> None:
    assert (await _shipped(policies, refund(200.01))).action is Action.REQUIRE_APPROVAL


async def test_tenant_mismatch_denied(policies: Path) -> None:
    decision = await _shipped(policies, refund(10, tenant_id="globex"))
    assert decision.action is Action.DENY
    assert decision.reasons == ("tenant_mismatch: argument tenant_id 'globex' is not the "
                                "caller's tenant 'acme'",)


async def test_tenant_argument_without_caller_tenant_denied(policies: Path) -> None:
    decision = await _shipped(policies, call_input("get_order", "green", {"tenant_id": "acme"},
                                                tenant=None))
    assert decision.action is Action.DENY
    assert decision.reasons[0].startswith("tenant_missing:")


async def test_yellow_without_limit_requires_approval(policies: Path) -> None:
    decision = await _shipped(policies, call_input("send_customer_email", "yellow", {"to": "a"}))
    assert decision.action is Action.REQUIRE_APPROVAL
    assert decision.reasons[0].startswith("no_limit:")
    assert decision.ttl_seconds is None


async def test_empty_input_is_denied(policies: Path) -> None:
    decision = await _shipped(policies, {})
    assert decision.action is Action.DENY
    assert decision.reasons
    assert decision.reasons[0] != "policy_error"


async def test_revision_is_the_sources_revision(policies: Path) -> None:
    async with shipped_engine(policies) as engine:
        assert engine.revision == load_sources([policies]).revision


async def test_concurrent_evaluations_are_all_correct(policies: Path) -> None:
    """50 evaluations at once on the one engine; inputs and answers never mix."""
    cases: list[tuple[dict[str, Any], Action]] = []
    for i in range(50):
        if i % 3 == 0:
            cases.append((refund(150 + i * 5), Action.ALLOW if 150 + i * 5 <= 200
                          else Action.REQUIRE_APPROVAL))
        elif i % 3 == 1:
            cases.append((call_input(f"tool_{i}", "green", {"n": i}), Action.ALLOW))
        else:
            cases.append((call_input(f"tool_{i}", "red", {"n": i}), Action.DENY))
    async with shipped_engine(policies) as engine:
        decisions = await asyncio.gather(*(engine.evaluate(doc) for doc, _ in cases))
    assert len(decisions) == 50
    for (doc, expected), decision in zip(cases, decisions, strict=True):
        assert decision.action is expected, doc
        if doc["tool"]["name"] != "create_refund_request":
            assert doc["tool"]["name"] in decision.reasons[0]
        else:
            assert f"amount {doc['args']['amount']} USD" in decision.reasons[0]


# ---- Failing policies ------------------------------------------------------------------

async def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "policy.rego"
    bad.write_text('package toolgate\n\nimport rego.v1\n\ndecision := {"action": \n\nx := 1\n',
                   encoding="utf-8")
    (tmp_path / "good.rego").write_text("package other\n\ny := 2\n", encoding="utf-8")
    with pytest.raises(LoadErrors) as info:
        EmbeddedEngine(load_sources([tmp_path]), QUERY, 1000)
    (error,) = info.value.errors
    assert error.file == str(bad)
    assert error.line == 7
    assert error.message
    assert str(error).startswith(f"{bad}:7: ")


async def test_every_broken_file_is_reported(tmp_path: Path) -> None:
    first = tmp_path / "a.rego"
    first.write_text("package a\n\nx := \n", encoding="utf-8")
    second = tmp_path / "b.rego"
    second.write_text("package b\n\nimport rego.v1\n\ny if {\n", encoding="utf-8")
    with pytest.raises(LoadErrors) as info:
        EmbeddedEngine(load_sources([tmp_path]), QUERY, 1000)
    assert sorted(e.file for e in info.value.errors) == [str(first), str(second)]
    assert all(e.line for e in info.value.errors)


async def test_undefined_decision_is_policy_error(tmp_path: Path) -> None:
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": "allow", "reasons": ["r: x"]} if input.tool.tier == "gold"\n')
    decision = await _evaluate_once(tmp_path, rego)
    _assert_policy_error(decision, "data.toolgate.decision is undefined")


async def test_missing_package_rule_is_policy_error(tmp_path: Path) -> None:
    decision = await _evaluate_once(tmp_path, "package elsewhere\n\nx := 1\n")
    assert decision.action is Action.DENY
    assert decision.reasons[0] == "policy_error"


@pytest.mark.parametrize("value", [
    '{"action": "yes", "reasons": []}',
    '{"action": "allow", "reasons": "ok"}',
    '{"action": "require_approval", "reasons": [], "approvals_required": 0}',
    '{"action": "allow", "reasons": [1]}',
    '"allow"',
    "true",
    '["allow"]',
])
async def test_malformed_decision_is_policy_error(tmp_path: Path, value: str) -> None:
    decision = await _evaluate_once(tmp_path, f"package toolgate\n\ndecision := {value}\n")
    assert decision.action is Action.DENY
    assert decision.reasons[0] == "policy_error"


async def test_divide_by_zero_is_policy_error(tmp_path: Path) -> None:
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": "allow", "reasons": [x]} if { x := 1/0 }\n')
    decision = await _evaluate_once(tmp_path, rego)
    _assert_policy_error(decision, "policy evaluation error")
    assert "divide by zero" in decision.reasons[1]


async def test_conflicting_outputs_are_policy_error(tmp_path: Path) -> None:
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": "allow", "reasons": []} if input.tool.tier == "green"\n'
            'decision := {"action": "deny", "reasons": []} if input.tool.name == "get_order"\n')
    decision = await _evaluate_once(tmp_path, rego)
    _assert_policy_error(decision, "policy evaluation error")


async def test_type_error_on_input_is_policy_error(tmp_path: Path) -> None:
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": "allow", "reasons": [sprintf("%v", [n])]} '
            'if { n := input.args.amount + 1 }\n')
    decision = await _evaluate_once(tmp_path, rego, refund("ten"))
    _assert_policy_error(decision, "policy evaluation error")


async def test_error_then_next_call_still_works(tmp_path: Path) -> None:
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": "allow", "reasons": [sprintf("%v", [n])]} '
            'if { n := input.args.amount + 1 }\n')
    engine = await _engine_for(tmp_path, rego)
    try:
        bad = await engine.evaluate(refund("ten"))
        good = await engine.evaluate(refund(1))
    finally:
        await engine.close()
    assert bad.action is Action.DENY
    assert good == PolicyDecision(Action.ALLOW, ("2",))


async def test_data_files_are_visible_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "data.json").write_text('{"verdict": "require_approval"}',
                                                     encoding="utf-8")
    rego = ('package toolgate\n\nimport rego.v1\n\n'
            'decision := {"action": data.settings.verdict, "reasons": ["from_data: yes"]}\n')
    decision = await _evaluate_once(tmp_path, rego)
    assert decision.action is Action.REQUIRE_APPROVAL
    assert decision.reasons == ("from_data: yes",)


async def test_query_is_configurable(tmp_path: Path) -> None:
    rego = ('package custom.gate\n\nimport rego.v1\n\n'
            'verdict := {"action": "allow", "reasons": [input.tool.name]}\n')
    engine = await _engine_for(tmp_path, rego, "data.custom.gate.verdict")
    try:
        decision = await engine.evaluate(call_input("get_order", "green", {}))
    finally:
        await engine.close()
    assert decision == PolicyDecision(Action.ALLOW, ("get_order",))


def test_error_location_parses_regorus_messages() -> None:
    message = "\n--> /p/x.rego:6:1\n  |\n6 | }\n  | ^\nerror: expecting expression"
    assert error_location(message) == ("/p/x.rego", 6, "expecting expression")
    assert error_location("error: something") == (None, None, "something")


# ---- Engine thread and lifetime ----------------------------------------------------------

async def test_engine_is_bound_to_the_thread_that_built_it(policies: Path) -> None:
    """A regorus Engine used from another thread makes pyo3 panic; the engine refuses first,
    with an exception the pipeline turns into a deny."""
    doc = call_input("get_order", "green", {})
    async with shipped_engine(policies) as engine:
        with pytest.raises(RuntimeError, match="bound to the thread"):
            await asyncio.to_thread(asyncio.run, engine.evaluate(doc))
        # Still usable on its own thread afterwards.
        assert (await engine.evaluate(doc)).action is Action.ALLOW


@contextlib.contextmanager
def _unraisable() -> Iterator[list[BaseException | None]]:
    """Collect what Python reports as "Exception ignored in ..." inside the block."""
    seen: list[BaseException | None] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: seen.append(info.exc_value)
    try:
        yield seen
    finally:
        gc.collect()
        sys.unraisablehook = previous


async def test_closed_engine_is_released_cleanly(policies: Path) -> None:
    """A regorus Engine is `unsendable`: dropped on any thread but its own, pyo3 reports
    "regoruspy::Engine is unsendable, but is being dropped on another thread" and leaks it
    (every reload and shutdown would). Closing and dropping must report nothing."""
    with _unraisable() as seen:
        engine = EmbeddedEngine(load_sources([policies]), QUERY, 1000)
        decision = await engine.evaluate(call_input("get_order", "green", {}))
        await engine.close()
        del engine
    assert decision.action is Action.ALLOW
    assert [str(e) for e in seen] == []


async def test_failed_start_releases_the_engine_cleanly(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package toolgate\n\nx := \n", encoding="utf-8")
    with _unraisable() as seen:
        with pytest.raises(LoadErrors) as info:
            EmbeddedEngine(load_sources([tmp_path]), QUERY, 1000)
        assert info.value.errors[0].file == str(tmp_path / "bad.rego")
        del info
    assert [str(e) for e in seen] == []


def test_unsupported_builtins_are_load_errors_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package toolgate\n\nimport rego.v1\n\n# io.jwt.decode(x) in a comment is fine\n"
        "claims := io.jwt.decode(input.token)\n\ndigest := crypto.sha256(\"a\")\n")
    with pytest.raises(LoadErrors) as info:
        compile_engine(load_sources([tmp_path]))
    found = {(e.line, e.message.split()[0]) for e in info.value.errors}
    assert found == {(6, "io.jwt.decode"), (8, "crypto.sha256")}


@pytest.mark.parametrize("action", [Action.DENY, Action.REQUIRE_APPROVAL])
async def test_a_late_deny_or_hold_still_stands(tmp_path: Path, action: Action) -> None:
    """Only a late allow is distrusted; under fail_open a late deny or hold must not turn
    into an allow."""
    (tmp_path / "p.rego").write_text(
        "package toolgate\n\nimport rego.v1\n\n"
        f"decision := {{\"action\": \"{action}\", \"reasons\": [sprintf(\"%d\", [n])]}} if {{\n"
        "\tn := count([x | some x in numbers.range(1, 300000)])\n}\n")
    engine = EmbeddedEngine(load_sources([tmp_path]), "data.toolgate.decision", 1)
    try:
        decision = await engine.evaluate({})
    finally:
        await engine.close()
    assert decision.action is action


# ---- The 30-day cap on a held call's ttl_seconds (THREAT_MODEL Q3) ------------------------

def _shipped_policy_with_ttl(repo_root: Path, directory: Path, ttl: int) -> Path:
    """The shipped policy, with an operator's data file that gives refunds `ttl`."""
    directory.mkdir()
    (directory / "toolgate.rego").write_text(
        (repo_root / "policies" / "toolgate.rego").read_text(encoding="utf-8"),
        encoding="utf-8")
    (directory / "data.yaml").write_text(yaml.safe_dump({"toolgate": {
        "tenant_argument": "tenant_id",
        "limits": {"create_refund_request": {
            "argument": "amount", "currency_argument": "currency", "max": {"USD": 200},
            "approver_roles": ["billing-approver"], "ttl_seconds": ttl}}}}),
        encoding="utf-8")
    return directory


@pytest.mark.parametrize("ttl", [MAX_TTL_SECONDS + 1, 365 * 86_400])
async def test_a_hold_longer_than_thirty_days_is_a_policy_error(
        tmp_path: Path, repo_root: Path, ttl: int) -> None:
    policies = _shipped_policy_with_ttl(repo_root, tmp_path / "policies", ttl)
    async with shipped_engine(policies) as engine:
        decision = await engine.evaluate(refund(250))
    _assert_policy_error(decision, f"ttl_seconds must be a number from 1 to {MAX_TTL_SECONDS}")


async def test_a_hold_of_thirty_days_is_held_that_long(
        tmp_path: Path, repo_root: Path, dev_key: DevKey, clock: FakeClock,
        recorder: tuple[Recorder, str], agent_token: str) -> None:
    """At the cap the call is held, and expires thirty days later; one second more and
    it is refused, with nothing held."""
    body = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}
    for ttl, status in ((MAX_TTL_SECONDS, 202), (MAX_TTL_SECONDS + 1, 403)):
        policies = _shipped_policy_with_ttl(repo_root, tmp_path / f"policies-{ttl}", ttl)
        async with runtime(tmp_path / f"gateway-{ttl}", dev_key, recorder[1], clock,
                           policies=[str(policies)]) as rt:
            bundle = rt.bundles.current
            reply = await handle(tool_call(bundle, "POST", "/billing/refunds",
                                           token=agent_token, body=body,
                                           headers={"Idempotency-Key": f"ttl-{ttl}"}),
                                 bundle, rt)
            assert reply.status == status, reply.body
            held = await rt.store.list_approvals()
            if status == 202:
                [approval] = held
                assert approval.expires_at == clock.time() + MAX_TTL_SECONDS
            else:
                error = orjson.loads(reply.body)["error"]
                assert (error["code"], error["reasons"][0]) == ("policy_denied", "policy_error")
                assert held == []
