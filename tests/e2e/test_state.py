"""Idempotency, run budgets and kill switches through a real gateway (SQLite store)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver
from tests.e2e.harness import Gateway, Reply, Upstream, running
from tests.e2e.profiles import state_gateway
from tests.e2e.test_cli import run


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
       upstream: Upstream) -> Iterator[Gateway]:
    with running(state_gateway(tmp_path_factory.mktemp("state"), dev_key, upstream)) as gateway:
        yield gateway


def with_key(upstream: Upstream, key: str) -> list[Any]:
    return [s for s in upstream.seen if s.headers.get("Idempotency-Key") == key]


def post(gw: Gateway, token: str, path: str, body: Any, **headers: str) -> Reply:
    return gw.call("POST", path, token=token, body=body, headers=headers)


# -- idempotency ------------------------------------------------------------------------------

def test_replay_returns_the_first_answer(gw: Gateway, upstream: Upstream, token: str) -> None:
    first = post(gw, token, "/state/items", {"name": "a"}, **{"Idempotency-Key": "i-1"})
    again = post(gw, token, "/state/items", {"name": "a"}, **{"Idempotency-Key": "i-1"})
    assert first.status == again.status == 200
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert len(with_key(upstream, "i-1")) == 1
    [decision] = [r for r in gw.records_for(again.request_id) if r["kind"] == "decision"]
    assert (decision["stage"], decision["reasons"]) == ("idempotency", ["idempotent_replay"])


def test_other_payload_or_principal_under_one_key_is_422(
        gw: Gateway, token: str, dev_key: DevKey) -> None:
    post(gw, token, "/state/items", {"name": "a"}, **{"Idempotency-Key": "i-2"})
    reply = post(gw, token, "/state/items", {"name": "b"}, **{"Idempotency-Key": "i-2"})
    assert (reply.status, reply.code) == (422, "idempotency_key_reused")
    colleague = dev_key.token("other-agent", tenant="acme", scopes=["echo:write"])
    reply = post(gw, colleague, "/state/items", {"name": "a"}, **{"Idempotency-Key": "i-2"})
    assert (reply.status, reply.code) == (422, "idempotency_key_reused")


def test_a_5xx_is_stored_and_replayed(gw: Gateway, upstream: Upstream, token: str) -> None:
    first = post(gw, token, "/state/fail", {}, **{"Idempotency-Key": "i-3"})
    again = post(gw, token, "/state/fail", {}, **{"Idempotency-Key": "i-3"})
    assert first.status == again.status == 500
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(with_key(upstream, "i-3")) == 1


def test_validation_failures_store_nothing(gw: Gateway, upstream: Upstream,
                                           token: str) -> None:
    bad = post(gw, token, "/state/items", {"name": ""}, **{"Idempotency-Key": "i-4"})
    assert bad.status == 422
    good = post(gw, token, "/state/items", {"name": "fixed"}, **{"Idempotency-Key": "i-4"})
    assert good.status == 200
    assert "Idempotent-Replayed" not in good.headers
    assert len(with_key(upstream, "i-4")) == 1


def test_key_limits(gw: Gateway, token: str) -> None:
    assert post(gw, token, "/state/items", {"name": "a"}).code == "idempotency_key_required"
    assert post(gw, token, "/state/items", {"name": "a"},
                **{"Idempotency-Key": "k" * 256}).code == "idempotency_key_invalid"
    assert post(gw, token, "/state/items", {"name": "a"},
                **{"Idempotency-Key": "k" * 255}).status == 200


def test_concurrent_requests_with_one_key(gw: Gateway, upstream: Upstream,
                                          token: str) -> None:
    replies: list[Reply] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        replies.append(post(gw, token, "/state/slow", {}, **{"Idempotency-Key": "i-5",
                                                            "X-Delay": "0.5"}))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(with_key(upstream, "i-5")) == 1
    fresh = [r for r in replies if r.status == 200 and "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert all(r.status == 409 or r.headers.get("Idempotent-Replayed") == "true"
               for r in replies if r is not fresh[0])
    assert any(r.code == "idempotency_in_flight" for r in replies)


# -- run budgets ------------------------------------------------------------------------------

def test_spend_cap_and_failed_calls(gw: Gateway, token: str) -> None:
    run_headers = {"X-Agent-Run-Id": "run-spend"}
    assert post(gw, token, "/state/spend", {"amount": 40}, **run_headers).status == 200
    failed = post(gw, token, "/state/spend-fail", {"amount": 30}, **run_headers)
    # The upstream's 502, passed through. The upstream may have acted: its spend stays.
    assert failed.status == 502
    assert post(gw, token, "/state/spend", {"amount": 30}, **run_headers).status == 200
    over = post(gw, token, "/state/spend", {"amount": 0.5}, **run_headers)
    assert (over.status, over.code) == (429, "budget_exceeded")
    assert over.json["error"]["budget"] == "max_spend.amount"
    [decision] = gw.records_for(over.request_id)
    assert decision["stage"] == "commit"  # the key and the budget are taken together
    assert decision["run"]["spent"] == {"amount": 100.0}
    assert post(gw, token, "/state/spend", {"amount": 0}, **run_headers).status == 200


def test_call_caps_and_tenant_override(gw: Gateway, token: str, dev_key: DevKey) -> None:
    run_headers = {"X-Agent-Run-Id": "run-calls"}
    for i in range(5):
        assert post(gw, token, "/state/items", {"name": "x"},
                    **{"Idempotency-Key": f"cap-{i}", **run_headers}).status == 200
    over = post(gw, token, "/state/items", {"name": "x"},
                **{"Idempotency-Key": "cap-6", **run_headers})
    assert (over.code, over.json["error"]["budget"]) == ("budget_exceeded",
                                                         "max_calls_per_tool")
    for _ in range(3):
        assert post(gw, token, "/state/spend", {"amount": 0}, **run_headers).status == 200
    over = post(gw, token, "/state/spend", {"amount": 0}, **run_headers)
    assert over.json["error"]["budget"] == "max_tool_calls"
    globex = dev_key.token("g-agent", tenant="globex", scopes=["echo:write"])
    assert post(gw, globex, "/state/spend", {"amount": 11},
                **{"X-Agent-Run-Id": "run-g"}).code == "budget_exceeded"
    assert post(gw, globex, "/state/spend", {"amount": 10},
                **{"X-Agent-Run-Id": "run-g"}).status == 200


def test_calls_without_a_run_have_no_budget(gw: Gateway, token: str) -> None:
    assert post(gw, token, "/state/spend", {"amount": 5000}).status == 200


# -- kill switch ------------------------------------------------------------------------------

def test_kill_and_revive(gw: Gateway, token: str, dev_key: DevKey) -> None:
    ops = approver(dev_key, "ops-oncall", "sre")
    base = ["--admin-url", f"http://127.0.0.1:{gw.admin_port}", "--token", ops]
    killed = run("kill", "--scope", "tool:spend_post", "--reason", "incident 42", *base)
    assert killed.returncode == 0, killed.stderr
    assert "killed tool:spend_post: incident 42" in killed.stdout
    reply = post(gw, token, "/state/spend", {"amount": 1})
    assert (reply.status, reply.code) == (403, "killed")
    assert reply.json["error"]["scope"] == "tool:spend_post"
    assert post(gw, token, "/state/items", {"name": "a"},
                **{"Idempotency-Key": "alive"}).status == 200
    listed = admin(gw, "GET", "/v1/killswitch", ops).json["killswitches"]
    assert [k["scope"] for k in listed] == ["tool:spend_post"]
    assert run("revive", "--scope", "tool:spend_post", *base).returncode == 0
    assert post(gw, token, "/state/spend", {"amount": 1}).status == 200
    events = [(r["event"], r["scope"]) for r in gw.records() if r["kind"] == "killswitch"]
    assert events[-2:] == [("set", "tool:spend_post"), ("cleared", "tool:spend_post")]


@pytest.mark.parametrize("scope", ["global", "tenant:acme", "agent:support-bot"])
def test_kill_scopes(gw: Gateway, token: str, dev_key: DevKey, scope: str) -> None:
    ops = approver(dev_key, "ops-oncall", "sre")
    assert admin(gw, "POST", "/v1/killswitch", ops,
                 {"scope": scope, "reason": "drill"}).status == 200
    try:
        assert post(gw, token, "/state/spend", {"amount": 1}).code == "killed"
    finally:
        assert admin(gw, "DELETE", f"/v1/killswitch/{scope}", ops).status == 200


def test_kill_switch_needs_the_scope_and_a_valid_scope(gw: Gateway, dev_key: DevKey) -> None:
    agent_token = dev_key.token("svc", tenant="acme", scopes=["echo:write"])
    assert admin(gw, "POST", "/v1/killswitch", agent_token,
                 {"scope": "global", "reason": "x"}).status == 403
    ops = approver(dev_key, "ops-oncall", "sre")
    assert admin(gw, "POST", "/v1/killswitch", ops,
                 {"scope": "everything", "reason": "x"}).code == "invalid_arguments"
    assert admin(gw, "POST", "/v1/killswitch", ops, {"scope": "global"}).status == 400


def test_an_approved_call_still_counts_against_its_run(gw: Gateway, upstream: Upstream,
                                                       token: str, dev_key: DevKey) -> None:
    run = {"X-Agent-Run-Id": "run-held"}
    refund = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}
    small = post(gw, token, "/billing/refunds", {**refund, "amount": 80},
                 **{"Idempotency-Key": "rb-1", **run})
    assert small.status == 201
    held = post(gw, token, "/billing/refunds", {**refund, "amount": 250},
                **{"Idempotency-Key": "rb-2", **run})
    assert held.status == 202
    alice = approver(dev_key, "alice", "billing-approver")
    done = admin(gw, "POST", f"/v1/approvals/{held.json['approval_id']}/approve", alice)
    assert (done.json["status"], done.json["error_code"]) == ("not_sent", "budget_exceeded")
    assert "over its cap of 100" in done.json["reason"]
    assert with_key(upstream, "rb-2") == []


def test_a_claim_never_lapses_while_its_call_is_in_flight(gw: Gateway, upstream: Upstream,
                                                          token: str) -> None:
    """A retry while the first request is still at the upstream is 409, never a second
    call. The upstream holds the first request until the test opens its gate, so nothing
    races. (That the lease outlasts `lease_seconds` when the tool's timeout is longer is
    shown with the injected clock: tests/pipeline/test_idempotency.py.)"""
    gate = upstream.gate("lease-1")
    first: list[Reply] = []
    worker = threading.Thread(target=lambda: first.append(post(
        gw, token, "/state/slow", {}, **{"Idempotency-Key": "lease-1", "X-Gate": "lease-1"})))
    worker.start()
    gate.wait_arrived()
    retry = post(gw, token, "/state/slow", {}, **{"Idempotency-Key": "lease-1"})
    gate.open()
    worker.join()
    assert (retry.status, retry.code) == (409, "idempotency_in_flight")
    assert first[0].status == 200
    assert len(with_key(upstream, "lease-1")) == 1


def test_retries_that_lose_the_race_cost_no_budget(gw: Gateway, token: str) -> None:
    run = {"X-Agent-Run-Id": "run-race"}
    barrier = threading.Barrier(6)
    replies: list[Reply] = []

    def send() -> None:
        barrier.wait()
        replies.append(post(gw, token, "/state/slow", {},
                            **{"Idempotency-Key": "race-budget", "X-Delay": "0.5", **run}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in replies).count(200) >= 1
    # max_tool_calls is 8: one call was sent, so seven more fit in the run.
    for i in range(7):
        assert post(gw, token, "/state/spend", {"amount": 0}, **run).status == 200, i
    assert post(gw, token, "/state/spend", {"amount": 0}, **run).code == "budget_exceeded"


def test_a_held_call_stopped_by_a_kill_switch_answers_killed(
        gw: Gateway, upstream: Upstream, token: str, dev_key: DevKey) -> None:
    body = {"tenant_id": "acme", "amount": 5}
    held = post(gw, token, "/echo/slow-refunds", body,
                **{"Idempotency-Key": "held-kill", "X-Delay": "0"})
    assert held.status == 202
    ops = approver(dev_key, "ops-oncall", "billing-approver")
    assert admin(gw, "POST", "/v1/killswitch", ops,
                 {"scope": "tool:slow_refund", "reason": "incident 9"}).status == 200
    try:
        done = admin(gw, "POST", f"/v1/approvals/{held.json['approval_id']}/approve", ops)
        assert (done.json["status"], done.json["error_code"]) == ("not_sent", "killed")
        retry = post(gw, token, "/echo/slow-refunds", body, **{"Idempotency-Key": "held-kill"})
        assert (retry.status, retry.code) == (403, "killed")
    finally:
        admin(gw, "DELETE", "/v1/killswitch/tool:slow_refund", ops)
    assert with_key(upstream, "held-kill") == []
