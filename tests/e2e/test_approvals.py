"""The approval queue end to end: a real gateway, the real CLI, a recording upstream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, running
from tests.e2e.profiles import approvals_gateway
from tests.e2e.test_cli import run

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
       upstream: Upstream) -> Iterator[Gateway]:
    with running(approvals_gateway(tmp_path_factory.mktemp("approvals"), dev_key,
                                   upstream)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def alice(dev_key: DevKey) -> str:
    return approver(dev_key, "alice", "billing-approver", "finance")


@pytest.fixture(scope="module")
def bob(dev_key: DevKey) -> str:
    return approver(dev_key, "bob", "billing-approver", "finance")


def hold(gw: Gateway, token: str, key: str, path: str = "/billing/refunds",
         body: dict[str, Any] | None = None) -> Reply:
    reply = gw.call("POST", path, token=token, body=body or REFUND,
                    headers={"Idempotency-Key": key})
    assert reply.status == 202, reply.raw
    return reply


def approval_records(gw: Gateway, approval_id: str) -> list[dict[str, Any]]:
    return [r for r in gw.records() if r.get("approval_id") == approval_id]


def with_key(upstream: Upstream, key: str) -> list[Any]:
    return [s for s in upstream.seen if s.headers.get("Idempotency-Key") == key]


def cli(gw: Gateway, token: str, *args: str) -> Any:
    return run("approvals", "--admin-url", f"http://127.0.0.1:{gw.admin_port}",
               "--token", token, *args)


def test_lifecycle_through_the_cli(gw: Gateway, upstream: Upstream, token: str,
                                   alice: str) -> None:
    held = hold(gw, token, "life-1")
    approval_id = held.json["approval_id"]
    assert with_key(upstream, "life-1") == []

    listing = cli(gw, alice, "list")
    assert listing.returncode == 0, listing.stderr
    assert approval_id in listing.stdout
    assert "create_refund_request" in listing.stdout
    shown = cli(gw, alice, "show", approval_id)
    assert '"amount": 250' in shown.stdout
    assert "over_limit:" in shown.stdout
    assert "svc-agent" in shown.stdout

    approved = cli(gw, alice, "approve", approval_id, "--comment", "customer is VIP")
    assert approved.returncode == 0, approved.stderr
    assert "status       executed" in approved.stdout
    assert "HTTP 201" in approved.stdout
    [sent] = with_key(upstream, "life-1")
    assert sent.raw_path == "/v1/refunds"
    assert json.loads(sent.body) == REFUND

    polled = gw.call("GET", held.json["poll"], token=token)
    assert polled.json["status"] == "executed"
    assert polled.json["result"]["status"] == 201
    assert polled.json["approvals"][0]["approver"]["sub"] == "alice"

    retry = gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                    headers={"Idempotency-Key": "life-1"})
    assert retry.status == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json == polled.json["result"]["body"]
    assert len(with_key(upstream, "life-1")) == 1, "a retry never executes again"

    events = [r.get("event") or r["kind"] for r in approval_records(gw, approval_id)]
    assert events[:5] == ["decision", "queued", "approval_vote", "approved", "executing"]
    assert events.count("outcome") == 1, "one outcome record: the execution's"
    records = approval_records(gw, approval_id)
    assert {r["decision_id"] for r in records if r["kind"] != "decision"} == {
        held.request_id}, "every approval and execution record links to the held call"
    [retried] = [r for r in records if r["decision_id"] == retry.request_id]
    assert (retried["kind"], retried["stage"]) == ("decision", "idempotency")

    hooks = wait_for(lambda: [json.loads(s.body) for s in upstream.seen
                              if s.raw_path == "/hooks/approvals"
                              and approval_id in s.body.decode()] or None,
                     what="webhooks")
    kinds = {h["toolgate"]["event"] for h in hooks}
    assert {"pending", "approved"} <= kinds
    # The arguments stay out (the policy's reasons, which may quote one, stay in).
    assert all("args" not in h["toolgate"] and "ord_1234" not in json.dumps(h) for h in hooks)


def test_retry_while_pending_is_202_not_a_second_hold(gw: Gateway, token: str,
                                                      alice: str) -> None:
    first = hold(gw, token, "pending-retry")
    second = hold(gw, token, "pending-retry")
    assert second.json["approval_id"] == first.json["approval_id"]
    listing = admin(gw, "GET", "/v1/approvals?status=pending&limit=500", alice)
    ids = [a["id"] for a in listing.json["approvals"] if a["idempotency_key"] ==
           "pending-retry"]
    assert ids == [first.json["approval_id"]]


def test_key_reused_with_other_arguments(gw: Gateway, token: str) -> None:
    hold(gw, token, "reuse-1")
    reply = gw.call("POST", "/billing/refunds", token=token,
                    body={**REFUND, "amount": 999}, headers={"Idempotency-Key": "reuse-1"})
    assert reply.status == 422
    assert reply.code == "idempotency_key_reused"


def test_reject_reaches_the_agent(gw: Gateway, upstream: Upstream, token: str,
                                  alice: str) -> None:
    held = hold(gw, token, "reject-1")
    approval_id = held.json["approval_id"]
    no_reason = admin(gw, "POST", f"/v1/approvals/{approval_id}/reject", alice, {})
    assert no_reason.status == 400
    rejected = cli(gw, alice, "reject", approval_id, "--reason", "duplicate of RF-1182")
    assert rejected.returncode == 0, rejected.stderr
    assert "status       rejected" in rejected.stdout
    polled = gw.call("GET", held.json["poll"], token=token).json
    assert polled["status"] == "rejected"
    assert polled["reason"] == "duplicate of RF-1182"
    retry = gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                    headers={"Idempotency-Key": "reject-1"})
    assert retry.status == 403
    assert retry.code == "policy_denied"
    assert retry.json["error"]["reasons"] == ["rejected: duplicate of RF-1182"]
    assert with_key(upstream, "reject-1") == []


def refused(gw: Gateway, approval_id: str, code: str) -> None:
    assert any(r.get("event") == "refused" and r.get("code") == code
               for r in approval_records(gw, approval_id)), code


def test_refusals_are_clear_and_audited(gw: Gateway, upstream: Upstream, token: str,
                                        dev_key: DevKey, alice: str) -> None:
    held = hold(gw, token, "refuse-1")
    approval_id = held.json["approval_id"]
    url = f"/v1/approvals/{approval_id}/approve"

    myself = dev_key.token("svc-agent", agent="support-bot", tenant="acme",
                           scopes=["toolgate:approve"], roles=["billing-approver"])
    reply = admin(gw, "POST", url, myself)
    assert (reply.status, reply.code) == (403, "self_approval")
    refused(gw, approval_id, "self_approval")

    clerk = approver(dev_key, "carol", "support")
    reply = admin(gw, "POST", url, clerk)
    assert (reply.status, reply.code) == (403, "approver_role_required")
    assert reply.json["error"]["approver_roles"] == ["billing-approver"]
    refused(gw, approval_id, "approver_role_required")

    no_scope = approver(dev_key, "dave", "billing-approver", scope=False)
    reply = admin(gw, "POST", url, no_scope)
    assert (reply.status, reply.code) == (403, "insufficient_scope")

    reply = admin(gw, "POST", url, None)
    assert (reply.status, reply.code) == (401, "unauthenticated")
    # Callers who are not approvers (no valid token, or a token without the scope) are
    # counted into the admin_refusals aggregate (tests/e2e/test_attacks.py), not recorded
    # one by one: anyone on the pod's network, the agent included, could fill the disk.
    assert not any(r.get("code") in {"unauthenticated", "insufficient_scope"}
                   for r in approval_records(gw, approval_id))

    assert admin(gw, "GET", "/v1/approvals", no_scope).status == 403
    assert with_key(upstream, "refuse-1") == []

    assert admin(gw, "POST", f"/v1/approvals/{approval_id}/reject", alice,
                 {"reason": "no"}).status == 200
    reply = admin(gw, "POST", url, alice)
    assert (reply.status, reply.code) == (409, "approval_not_pending")
    assert reply.json["error"]["approval_status"] == "rejected"
    refused(gw, approval_id, "approval_not_pending")
    assert admin(gw, "POST", "/v1/approvals/apr_nope/approve", alice).status == 404


def test_expired_call_fails_closed(gw: Gateway, upstream: Upstream, token: str,
                                   alice: str) -> None:
    held = hold(gw, token, "expire-1", "/echo/expiring", {"tenant_id": "acme", "amount": 5})
    approval_id = held.json["approval_id"]
    wait_for(lambda: gw.call("GET", held.json["poll"], token=token).json["status"]
             == "expired", what="expiry")
    reply = admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", alice)
    assert reply.status == 409
    assert "expired" in json.dumps(reply.json)
    retry = gw.call("POST", "/echo/expiring", token=token,
                    body={"tenant_id": "acme", "amount": 5},
                    headers={"Idempotency-Key": "expire-1"})
    assert retry.status == 403
    assert retry.json["error"]["reasons"] == ["approval_expired"]
    assert with_key(upstream, "expire-1") == []
    assert any(r.get("event") == "expired" for r in approval_records(gw, approval_id))


def test_two_approvers_at_the_same_moment_execute_once(
        gw: Gateway, upstream: Upstream, token: str, alice: str, bob: str) -> None:
    for round_ in range(5):
        key = f"race-{round_}"
        approval_id = hold(gw, token, key).json["approval_id"]
        barrier = threading.Barrier(2)
        results: list[Reply] = []

        def approve(who: str, barrier: threading.Barrier, results: list[Reply],
                    url: str) -> None:
            barrier.wait()
            results.append(admin(gw, "POST", url, who))

        url = f"/v1/approvals/{approval_id}/approve"
        threads = [threading.Thread(target=approve, args=(t, barrier, results, url))
                   for t in (alice, bob)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status for r in results)
        assert statuses == [200, 409], [r.raw for r in results]
        winner = next(r for r in results if r.status == 200)
        assert winner.json["status"] == "executed"
        assert len(with_key(upstream, key)) == 1


def test_two_person_rule(gw: Gateway, upstream: Upstream, token: str, alice: str,
                         bob: str, dev_key: DevKey) -> None:
    held = hold(gw, token, "two-1", "/echo/two-person", {"tenant_id": "acme", "amount": 5})
    approval_id = held.json["approval_id"]
    url = f"/v1/approvals/{approval_id}/approve"
    first = admin(gw, "POST", url, alice)
    assert first.status == 200
    assert first.json["status"] == "pending"
    again = admin(gw, "POST", url, alice)
    assert (again.status, again.code) == (409, "already_approved_by_you")
    billing_only = approver(dev_key, "erin", "billing-approver")
    assert admin(gw, "POST", url, billing_only).code == "approver_role_required"
    assert with_key(upstream, "two-1") == []
    second = admin(gw, "POST", url, bob)
    assert second.json["status"] == "executed"
    assert [v["approver"]["sub"] for v in second.json["approvals"]] == ["alice", "bob"]
    assert len(with_key(upstream, "two-1")) == 1


def test_openapi_document(gw: Gateway) -> None:
    doc = admin(gw, "GET", "/openapi.json", None).json
    assert doc["openapi"] == "3.1.0"
    assert "/v1/approvals/{approval_id}/approve" in doc["paths"]
    assert "/v1/approvals/{approval_id}/reject" in doc["paths"]


def test_cli_json_and_errors(gw: Gateway, token: str, alice: str, dev_key: DevKey) -> None:
    approval_id = hold(gw, token, "cli-json").json["approval_id"]
    shown = cli(gw, alice, "--json", "show", approval_id)
    assert json.loads(shown.stdout)["id"] == approval_id
    listed = json.loads(cli(gw, alice, "--json", "list", "--tool",
                            "create_refund_request").stdout)
    assert approval_id in {a["id"] for a in listed["approvals"]}
    bad = cli(gw, approver(dev_key, "zed", "support"), "approve", approval_id)
    assert bad.returncode == 1
    assert "approver_role_required" in bad.stderr
    unreachable = run("approvals", "--admin-url", "http://127.0.0.1:1", "--token", alice,
                      "list")
    assert unreachable.returncode == 2
    assert "cannot reach" in unreachable.stderr


def test_failing_webhook_is_retried_counted_and_never_blocks(
        tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
        token: str) -> None:
    hook = f"{upstream.url}/v1/status/503"
    gw = approvals_gateway(tmp_path_factory.mktemp("hook"), dev_key, upstream,
                           webhook={"url": hook, "max_attempts": 3, "backoff_ms": 20})
    with running(gw):
        before = sum(1 for s in upstream.seen if s.raw_path == "/v1/status/503")
        reply = hold(gw, token, "hook-1")
        assert reply.status == 202

        def gave_up() -> bool:
            text = admin(gw, "GET", "/metrics", None).raw.decode()
            return 'toolgate_webhook_failures_total{reason="gave_up"} 1.0' in text

        wait_for(gave_up, what="the webhook to be given up")
        after = sum(1 for s in upstream.seen if s.raw_path == "/v1/status/503")
        assert after - before == 3
        assert "webhook delivery 1/3" in gw.log()


def test_cli_options_after_the_subcommand_as_the_readme_writes_them(
        gw: Gateway, token: str, alice: str) -> None:
    """`toolgate approvals list [--status …] [--tool T] [--json]`, `show apr_… [--json]`,
    with `--admin-url` and `--token` after the subcommand too."""
    approval_id = hold(gw, token, "cli-after").json["approval_id"]
    where = ["--admin-url", f"http://127.0.0.1:{gw.admin_port}", "--token", alice]
    listed = run("approvals", "list", "--status", "all", "--tool", "create_refund_request",
                 "--json", *where)
    assert listed.returncode == 0, listed.stderr
    assert approval_id in {a["id"] for a in json.loads(listed.stdout)["approvals"]}
    shown = run("approvals", "show", approval_id, "--json", *where)
    assert json.loads(shown.stdout)["id"] == approval_id
    approved = run("approvals", "approve", approval_id, *where, "--comment", "ok")
    assert approved.returncode == 0, approved.stderr
    assert "status       executed" in approved.stdout
