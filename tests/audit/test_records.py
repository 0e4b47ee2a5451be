"""Decision and outcome records, built from real calls on a real runtime: what the policy saw
(`input`, redacted like `args`), the tool's own `spec_revision`, `args_valid`, `spend`, and
the tool on every outcome. `PII_SPEC` and `PII_POLICY` are the bundle of the PII tests
(here and end to end, `tests/e2e/test_pii.py`)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import pipeline
from gateway.act.handle import handle, refuse
from gateway.audit import records
from gateway.audit.log import AuditStartError
from gateway.audit.redact import REDACTED, Redactor
from gateway.bundle.routes import PathTemplate
from gateway.core.canonical import rfc3339_precise
from gateway.core.errors import ToolNotAllowed
from gateway.core.policy_input import bucket
from gateway.core.stage import Stage
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import START, FakeClock, Recorder, context, runtime, tool_call
from tests.support import records as all_records

# A green tool whose customer (a path parameter), e-mail and card numbers are x-pii, and
# whose `memo` the policy redacts; it spends its `amount`.
PII_SPEC = """\
name: pii_note
description: A note about a customer, with personal data in it
upstream: echo
route: {method: POST, path: "/pii/customers/{customer}/notes"}
forward: {path: /v1/pii-notes}
scopes: [echo:write]
tier: green
idempotency: optional
spend: amount
input_schema:
  type: object
  additionalProperties: false
  required: [customer, amount]
  properties:
    customer: {type: string, x-pii: true}
    amount: {type: number, minimum: 0}
    email: {type: string, format: email, x-pii: true}
    cards:
      type: array
      items:
        type: object
        properties: {number: {type: string, x-pii: true}, label: {type: string}}
    memo: {type: string}
    note: {type: string}
"""
# Up to 10 is allowed, under 1000 held for a person, the rest denied; `memo` is redacted.
PII_POLICY = """\
package toolgate

import rego.v1

decision := {"action": verdict[0], "reasons": [verdict[1]], "redact": ["/memo"]}

default verdict := ["deny", "too_much: over every limit"]

verdict := ["allow", "small: within the limit"] if input.args.amount <= 10

verdict := ["require_approval", "medium: a person decides"] if {
	input.args.amount > 10
	input.args.amount < 1000
}
"""
PATH = "/pii/customers/{customer}/notes"
TOKEN = re.compile(r"^hmac:[0-9a-f]{32}$")
KEY = b"a-redaction-key-of-at-least-32-bytes!"


def write_pii_bundle(directory: Path) -> tuple[Path, Path]:
    """The PII tool's spec directory and policy directory, written under `directory`."""
    specs, policies = directory / "specs", directory / "policies"
    specs.mkdir(parents=True, exist_ok=True)
    policies.mkdir(parents=True, exist_ok=True)
    (specs / "pii.yaml").write_text(PII_SPEC, encoding="utf-8")
    (policies / "pii.rego").write_text(PII_POLICY, encoding="utf-8")
    return specs, policies


def pii_args(customer: str = "ann", amount: float = 5, **more: Any) -> dict[str, Any]:
    return {"amount": amount, "email": f"{customer}@example.com",
            "cards": [{"number": "4111", "label": "main"}, {"number": "5500"}],
            "memo": f"memo about {customer}", "note": "ordinary", **more}


def path(customer: str = "ann") -> str:
    return PATH.replace("{customer}", customer)


def decision_of(rt: Runtime, request_id: str) -> dict[str, Any]:
    [record] = [r for r in all_records(rt)
                if r["decision_id"] == request_id and r["kind"] == "decision"]
    return record


def bundle_settings(tmp_path: Path, **audit: Any) -> dict[str, Any]:
    specs, policies = write_pii_bundle(tmp_path / "bundle")
    return {"tool_specs": [str(specs)], "policies": [str(policies)],
            "audit": {"file": "audit/toolgate.jsonl", **audit}}


@pytest.fixture
async def pii_rt(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                 clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       **bundle_settings(tmp_path)) as rt:
        yield rt


@pytest.fixture
async def hash_rt(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                  clock: FakeClock) -> AsyncIterator[Runtime]:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "redaction.key").write_bytes(KEY)
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       **bundle_settings(tmp_path, redaction="hash",
                                         redaction_key_file="keys/redaction.key")) as rt:
        yield rt


async def call(rt: Runtime, token: str | None, request_id: str, customer: str = "ann",
               **args: Any) -> dict[str, Any]:
    bundle = rt.bundles.current
    await handle(tool_call(bundle, "POST", path(customer), token=token,
                           body=pii_args(customer, **args), request_id=request_id),
                 bundle, rt)
    return decision_of(rt, request_id)


# ---- input: what the policy saw ------------------------------------------------------------


async def test_the_record_carries_the_input_the_policy_saw_redacted(
        pii_rt: Runtime, agent_token: str) -> None:
    ctx = context(pii_rt, "POST", path(), token=agent_token, body=pii_args(),
                  request_id="req_in", headers={"X-Agent-Run-Id": "run-7"})
    verdict = await pipeline.run(ctx, pii_rt)
    shown = ctx.policy_input
    assert shown is not None and shown["args"]["email"] == "ann@example.com", \
        "the policy itself sees the values"
    record = records.decision(verdict, revision="rev", elapsed_s=0.0, spec=ctx.call.spec,
                              ctx=ctx, redactor=pii_rt.redactor)
    seen = record["input"]
    assert seen["tool"] == {"name": "pii_note", "tier": "green", "scopes": ["echo:write"],
                            "upstream": "echo", "mode": "enforce"}
    principal = seen["principal"]
    assert (principal["sub"], principal["agent"], principal["tenant"]) == (
        "svc-agent", "support-bot", "acme")
    assert "echo:write" in principal["scopes"] and principal["roles"] == []
    assert principal["claims"]["sub"] == "svc-agent", "the claims the policy saw are kept"
    assert seen["run"] == {"id": "run-7", "tool_calls": 0, "calls_per_tool": {}, "spent": {}}
    assert seen["request"] == {
        "id": "req_in", "method": "POST", "path": "/pii/customers/%5BREDACTED%5D/notes",
        "idempotency_key": None, "time": rfc3339_precise(START), "source_ip": "10.1.2.3",
        "entrance": "rest", "bucket": bucket("pii_note", "acme", "svc-agent", "req_in")}
    expected_args = {"customer": REDACTED, "amount": 5, "email": REDACTED,
                     "cards": [{"number": REDACTED, "label": "main"}, {"number": REDACTED}],
                     "memo": REDACTED, "note": "ordinary"}
    assert seen["args"] == record["args"] == expected_args
    assert record["redacted"] == ["/cards/0/number", "/cards/1/number", "/customer", "/email",
                                  "/memo"]
    # Everything else is exactly the document the policy was given.
    assert {k: v for k, v in seen.items() if k not in ("args", "request")} == {
        k: v for k, v in shown.items() if k not in ("args", "request")}
    assert shown["args"]["memo"] == "memo about ann", "the record's copy is redacted, not it"


async def test_a_call_refused_before_the_policy_has_no_input(pii_rt: Runtime) -> None:
    record = await call(pii_rt, None, "req_anon")
    assert (record["stage"], record["input"], record["args"]) == ("authenticate", None, None)
    reply = refuse(tool_call(pii_rt.bundles.current, "POST", path(), request_id="req_rt").facts,
                   Stage.ROUTE, ToolNotAllowed("no"), pii_rt.bundles.current, pii_rt)
    assert reply.status == 403
    entrance = decision_of(pii_rt, "req_rt")
    assert (entrance["input"], entrance["args_valid"], entrance["spend"],
            entrance["spec_revision"]) == (None, None, None, None)


async def test_a_held_call_records_its_input_and_keeps_its_pointers(
        pii_rt: Runtime, agent_token: str) -> None:
    record = await call(pii_rt, agent_token, "req_held", amount=50)
    assert (record["action"], record["status"]) == ("require_approval", 202)
    assert record["input"]["args"]["email"] == REDACTED
    assert record["input"]["args"]["amount"] == 50
    held = await pii_rt.store.get_approval(record["approval_id"])
    assert held is not None
    assert held.args["email"] == "ann@example.com", "the approver is shown the real call"
    assert set(held.redact) == {"/customer", "/email", "/cards/*/number", "/memo"}


# ---- spec_revision, args_valid, spend -----------------------------------------------------


async def test_spec_revision_args_valid_and_spend(pii_rt: Runtime, agent_token: str) -> None:
    spec = pii_rt.bundles.current.tools["pii_note"]
    allowed = await call(pii_rt, agent_token, "req_ok", amount=7.5)
    assert allowed["spec_revision"] == spec.revision
    assert re.fullmatch(r"[0-9a-f]{16}", allowed["spec_revision"])
    assert (allowed["args_valid"], allowed["spend"]) == (True, {"amount": 7.5})
    invalid = await call(pii_rt, agent_token, "req_bad", amount="lots")
    assert (invalid["code"], invalid["args_valid"], invalid["spend"]) == (
        "schema_invalid", False, None)
    assert invalid["args"] is None and "args_outline" in invalid
    assert "ann@example.com" not in str(invalid)
    anonymous = await call(pii_rt, None, "req_none")
    assert (anonymous["args_valid"], anonymous["spend"]) == (None, None)
    assert anonymous["spec_revision"] == spec.revision


async def test_a_retry_answered_from_its_key_never_checked_the_arguments(
        rt: Runtime, agent_token: str) -> None:
    bundle = rt.bundles.current
    for request_id in ("req_first", "req_again"):
        await handle(tool_call(bundle, "POST", "/echo/items", token=agent_token,
                               body={"name": "a", "count": 1, "contact": "c@example.com"},
                               request_id=request_id, headers={"Idempotency-Key": "k-1"}),
                     bundle, rt)
    first, again = decision_of(rt, "req_first"), decision_of(rt, "req_again")
    assert (first["args_valid"], first["spend"]) == (True, {})
    assert first["args"] == {"name": "a", "count": 1, "contact": REDACTED}
    assert (again["stage"], again["args_valid"], again["input"]) == ("idempotency", None, None)
    # Which values that call's policy redacted is not kept with a completed call: all are.
    assert (again["args"], again["redacted"]) == (REDACTED, [""])


async def test_a_retry_of_a_held_call_is_redacted_as_it_was(pii_rt: Runtime,
                                                            agent_token: str) -> None:
    """The policy is not asked again; the pointers kept with the held call apply."""
    bundle = pii_rt.bundles.current
    for request_id in ("req_hold", "req_retry"):
        await handle(tool_call(bundle, "POST", path(), token=agent_token,
                               body=pii_args(amount=50), request_id=request_id,
                               headers={"Idempotency-Key": "k-held"}), bundle, pii_rt)
    held, retry = decision_of(pii_rt, "req_hold"), decision_of(pii_rt, "req_retry")
    assert (retry["stage"], retry["action"], retry["approval_id"]) == (
        "idempotency", "require_approval", held["approval_id"])
    assert retry["args"] == held["args"]
    assert retry["args"]["memo"] == REDACTED, "the policy's pointer, kept with the call"
    assert retry["redacted"] == held["redacted"]


async def test_every_outcome_record_names_its_tool(pii_rt: Runtime, agent_token: str) -> None:
    await call(pii_rt, agent_token, "req_out")
    [outcome] = [r for r in all_records(pii_rt)
                 if r["decision_id"] == "req_out" and r["kind"] == "outcome"]
    assert (outcome["tool"], outcome["upstream_status"]) == ("pii_note", 201)


# ---- the keyed hash -----------------------------------------------------------------------


async def test_hash_tokens_correlate_across_records(hash_rt: Runtime, agent_token: str) -> None:
    first = await call(hash_rt, agent_token, "req_h1", "ann")
    second = await call(hash_rt, agent_token, "req_h2", "ann", amount=6)
    other = await call(hash_rt, agent_token, "req_h3", "bob")
    expected = Redactor(KEY).token("ann@example.com")
    assert first["args"]["email"] == second["args"]["email"] == expected
    assert first["input"]["args"]["email"] == expected
    assert other["args"]["email"] != expected
    assert TOKEN.match(first["args"]["customer"])
    assert first["input"]["request"]["path"] == (
        f"/pii/customers/{first['args']['customer']}/notes")
    assert first["args"]["cards"][0]["number"] == Redactor(KEY).token("4111")
    everything = str(all_records(hash_rt))
    assert "ann@example.com" not in everything and "4111" not in everything


async def test_a_bad_redaction_key_stops_the_start(tmp_path: Path, dev_key: DevKey,
                                                    recorder: tuple[Recorder, str],
                                                    clock: FakeClock) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "redaction.key").write_bytes(b"short")
    settings = bundle_settings(tmp_path, redaction="hash",
                               redaction_key_file="keys/redaction.key")
    with pytest.raises(AuditStartError, match=r"audit.redaction_key: .* holds 5 bytes"):
        async with runtime(tmp_path, dev_key, recorder[1], clock, **settings):
            pass


def test_a_redacted_path_parameter_takes_its_token() -> None:
    route = PathTemplate.parse("/c/{customer}/orders/{order}")
    args = {"customer": "hmac:" + "0" * 32, "order": "o-1"}
    assert records.redacted_path(route, "/c/ann%40x/orders/o-1", args, ["/customer"]) == (
        "/c/hmac:" + "0" * 32 + "/orders/o-1")
    assert records.redacted_path(route, "/c/ann/orders/o-1", args, ["/email"]) == (
        "/c/ann/orders/o-1")
    assert records.redacted_path(route, "/c/ann/orders/o-1", REDACTED, [""]) == (
        "/c/%5BREDACTED%5D/orders/%5BREDACTED%5D")
    assert records.redacted_path(route, "/c/ann", args, ["/customer"]) == route.text
