"""`toolgate audit report|query|verify` on the audit log of a real gateway, after a scripted
mix of calls: the report prints exactly the counts and rates the script implies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, running
from tests.e2e.profiles import default_gateway
from tests.e2e.test_cli import run

REFUND = "create_refund_request"


def refund(gw: Gateway, token: str, key: str | None, run_id: str, **args: Any) -> Reply:
    body = {"tenant_id": "acme", "order_id": "ord_5521", "currency": "USD", **args}
    headers = {"X-Agent-Run-Id": run_id, **({"Idempotency-Key": key} if key else {})}
    return gw.call("POST", "/billing/refunds", token=token, body=body, headers=headers)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
             token: str) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """A gateway of its own (its audit log holds this script and nothing else), and the
    approval ids of the two held calls."""
    with running(default_gateway(tmp_path_factory.mktemp("audit-report"), dev_key,
                                 upstream)) as gw:
        alice = approver(dev_key, "alice", "billing-approver")
        # Five refunds within the limit, forwarded: 10 + 20 + 30 in run-a, 40 + 50 in run-b.
        for n, (amount, run_id) in enumerate([(10, "run-a"), (20, "run-a"), (30, "run-a"),
                                              (40, "run-b"), (50, "run-b")]):
            assert refund(gw, token, f"ok-{n}", run_id, amount=amount).status == 201
        # Two that fail the schema, two the policy denies, one without its key.
        for n in range(2):
            reply = refund(gw, token, f"bad-{n}", "run-a", amount="lots")
            assert reply.code == "schema_invalid"
        for n in range(2):
            reply = refund(gw, token, f"other-{n}", "run-b", amount=5, tenant_id="globex")
            assert reply.code == "policy_denied"
        assert refund(gw, token, None, "run-a", amount=5).code == "idempotency_key_required"
        # Two held: 250 approved (executed, in run-a's spend), 300 rejected.
        approve = refund(gw, token, "held-1", "run-a", amount=250).json["approval_id"]
        reject = refund(gw, token, "held-2", "run-b", amount=300).json["approval_id"]
        assert admin(gw, "POST", f"/v1/approvals/{approve}/approve", alice, {}).status == 200
        assert admin(gw, "POST", f"/v1/approvals/{reject}/reject", alice,
                     {"reason": "not this one"}).status == 200
        wait_for(lambda: [r for r in gw.records()
                          if r["kind"] == "outcome" and r.get("approval_id") == approve],
                 what="the approved call's outcome record")
        # Another tool: three 200s and a 500.
        for status in (200, 200, 200, 500):
            assert gw.call("GET", f"/echo/status/{status}", token=token).status == status
        yield gw, {"approved": approve, "rejected": reject}


def report(gw: Gateway, *args: str) -> Any:
    result = run("audit", "report", "--config", str(gw.directory / "toolgate.yaml"),
                 "--period", "all", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_report_prints_the_rates_the_script_implies(
        scripted: tuple[Gateway, dict[str, str]]) -> None:
    gw, _ = scripted
    groups = {g["tool"]: g for g in json.loads(report(gw, "--json"))["groups"]}
    assert set(groups) == {REFUND, "echo_status"}
    g = groups[REFUND]
    assert g["calls"] == 12
    assert g["actions"] == {"allow": 5, "require_approval": 2, "deny": 5}
    # Valid: 5 forwarded, 2 denied by policy, 2 held; invalid: 2; the keyless one was
    # refused before its arguments were looked at.
    assert g["validity"] == {"valid": 9, "invalid": 2, "checked": 11, "unchecked": 1,
                             "rate": 9 / 11}
    assert g["success"] == {"forwarded": 6, "succeeded": 6, "rate": 1.0}
    post = g["postcondition"]
    assert post["rate"] == 1.0 and post["passed"] == post["checked"] >= 5
    approvals = g["approvals"]
    assert {k: v for k, v in approvals.items() if k != "wait_s"} == {
        "approved": 1, "rejected": 1, "expired": 0, "pending": 0, "decided": 2, "rate": 0.5}
    wait = approvals["wait_s"]
    assert wait["count"] == 2 and 0 < wait["p50"] <= wait["p95"]
    fallback = g["fallback_ms"]
    assert fallback["count"] == 7 and 0 < fallback["p50"] <= fallback["p95"]
    assert g["denials"] == {"schema_invalid": 2, "policy_denied": 2,
                            "idempotency_key_required": 1}
    assert g["policy_denials"] == {"tenant_mismatch": 2}
    assert g["spend_per_run"] == {"runs": 2, "currencies": {
        "amount": {"total": 400.0, "mean": 200.0, "max": 310.0}}}

    echo = groups["echo_status"]
    assert (echo["calls"], echo["success"]) == (4, {"forwarded": 4, "succeeded": 3,
                                                    "rate": 0.75})
    assert echo["postcondition"]["rate"] is None        # the tool has no output schema

    csv_lines = report(gw, "--csv", "--tool", "echo_status").splitlines()
    assert csv_lines[0].startswith("period,tool,calls,")
    assert csv_lines[1].startswith("all,echo_status,4,")
    table = report(gw, "--tool", REFUND)
    assert "81.8% (9/11)" in table and "50.0% (1/2)" in table
    assert "policy_denied=2 (tenant_mismatch=2)" in table


def test_query_finds_every_record_of_a_held_call(
        scripted: tuple[Gateway, dict[str, str]]) -> None:
    gw, held = scripted
    [decision] = [r for r in gw.records()
                  if r["kind"] == "decision" and r.get("approval_id") == held["approved"]]
    result = run("audit", "query", str(gw.audit_file), "--decision-id",
                 decision["decision_id"], "--json")
    assert result.returncode == 0, result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("event") or r["kind"] for r in found][:3] == ["decision", "queued",
                                                               "approval_vote"]
    assert {"approved", "outcome"} <= {r.get("event") or r["kind"] for r in found}
    assert {r["decision_id"] for r in found} == {decision["decision_id"]}
    denied = run("audit", "query", str(gw.audit_file), "--code", "policy_denied")
    assert len(denied.stdout.splitlines()) == 3          # the header and two calls


def test_the_chain_of_the_scripted_log_holds(
        scripted: tuple[Gateway, dict[str, str]]) -> None:
    gw, _ = scripted
    result = run("audit", "verify", "--config", str(gw.directory / "toolgate.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok: {len(gw.records())} records in 1 files, seq 1..")
