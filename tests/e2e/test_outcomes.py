"""Every outcome row of DESIGN §3 this gateway covers, with its status and code, through a
real `toolgate serve` and a real upstream — and exactly one decision record for each call.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Reply, Upstream, request

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 120, "currency": "USD"}


def one_decision(gateway: Gateway, reply: Reply) -> dict[str, Any]:
    records = gateway.records_for(reply.request_id)
    decisions = [r for r in records if r["kind"] == "decision"]
    assert len(decisions) == 1, records
    return decisions[0]


def outcomes(gateway: Gateway, reply: Reply) -> list[dict[str, Any]]:
    return [r for r in gateway.records_for(reply.request_id) if r["kind"] == "outcome"]


def test_forwarded_call_returns_the_upstream_status_and_body(
        gateway: Gateway, upstream: Upstream, token: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("POST", "/billing/refunds", token=token, body=REFUND,
                         headers={"Idempotency-Key": "fwd-1"})
    assert reply.status == 201
    assert reply.json["status"] == "created"
    assert reply.headers["X-Toolgate-Decision"] == "allow"
    assert reply.headers["X-Upstream"] == "billing"  # upstream headers pass back
    assert len(upstream.seen) == before + 1
    decision = one_decision(gateway, reply)
    assert decision["action"] == "allow"
    assert decision["stage"] == "policy"
    assert decision["tool"] == "create_refund_request"
    assert decision["principal"] == {"sub": "svc-agent", "agent": "support-bot",
                                     "tenant": "acme"}
    [outcome] = outcomes(gateway, reply)
    assert outcome["upstream_status"] == 201
    assert outcome["output_valid"] is True


def test_upstream_error_status_is_passed_through(gateway: Gateway, token: str) -> None:
    reply = gateway.call("GET", "/echo/status/503", token=token)
    assert reply.status == 503
    assert reply.json == {"status": 503}
    assert reply.headers["X-Toolgate-Decision"] == "allow"
    [outcome] = outcomes(gateway, reply)
    assert outcome["upstream_status"] == 503


def test_over_the_limit_is_queued_and_pollable(gateway: Gateway, upstream: Upstream,
                                               token: str, dev_key: DevKey) -> None:
    before = len(upstream.seen)
    reply = gateway.call("POST", "/billing/refunds", token=token,
                         body={**REFUND, "amount": 250}, headers={"Idempotency-Key": "q-1"})
    assert reply.status == 202
    body = reply.json
    assert body["status"] == "pending_approval"
    assert body["poll"] == f"/v1/approvals/{body['approval_id']}"
    assert any(r.startswith("over_limit:") for r in body["reasons"])
    assert reply.headers["X-Toolgate-Decision"] == "require_approval"
    assert len(upstream.seen) == before, "a held call must not reach the upstream"
    decision = one_decision(gateway, reply)
    assert decision["action"] == "require_approval"
    assert decision["approval_id"] == body["approval_id"]

    held = gateway.call("GET", body["poll"], token=token)
    assert held.status == 200
    assert held.json["status"] == "pending"
    assert held.json["args"]["amount"] == 250
    assert held.json["approver_roles"] == ["billing-approver"]
    assert held.json["decision_id"] == reply.request_id
    # Another principal cannot read it, and cannot tell it exists.
    other = dev_key.token("someone-else", tenant="acme", scopes=["billing:refund"])
    assert gateway.call("GET", body["poll"], token=other).status == 404
    assert gateway.call("GET", body["poll"]).status == 401


def test_policy_denied(gateway: Gateway, token: str) -> None:
    reply = gateway.call("PUT", "/payroll/employees/emp_0042/bank-account", token=token,
                         body={"tenant_id": "acme", "iban": "DE89370400440532013000"},
                         headers={"Idempotency-Key": "bank-1"})
    assert reply.status == 403
    error = reply.json["error"]
    assert error["code"] == "policy_denied"
    assert error["fallback"] == "route_to_human"
    assert error["reasons"][0].startswith("red_tier:")
    assert error["request_id"] == reply.request_id
    decision = one_decision(gateway, reply)
    assert decision["stage"] == "policy"
    assert decision["args"]["iban"] == "[REDACTED]"


def test_tenant_mismatch_is_denied(gateway: Gateway, token: str) -> None:
    reply = gateway.call("GET", "/crm/customers/cus_1001?tenant_id=globex", token=token)
    assert reply.status == 403
    assert reply.code == "policy_denied"
    assert reply.json["error"]["reasons"][0].startswith("tenant_mismatch:")


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/admin/users"), ("GET", "/billing/refunds"), ("DELETE", "/orders/ord_1234"),
    ("GET", "/"),
])
def test_unknown_route_is_tool_not_allowed(gateway: Gateway, token: str, method: str,
                                           path: str) -> None:
    reply = gateway.call(method, path, token=token)
    assert reply.status == 403
    assert reply.code == "tool_not_allowed"
    assert one_decision(gateway, reply)["stage"] == "route"


def test_missing_token_is_unauthenticated(gateway: Gateway) -> None:
    reply = gateway.call("GET", "/orders/ord_1234?tenant_id=acme")
    assert reply.status == 401
    assert reply.code == "unauthenticated"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert one_decision(gateway, reply)["stage"] == "authenticate"


def test_missing_scope_is_insufficient_scope(gateway: Gateway, dev_key: DevKey) -> None:
    reader = dev_key.token("svc-reader", tenant="acme", scopes=["orders:read"])
    reply = gateway.call("POST", "/billing/refunds", token=reader, body=REFUND,
                         headers={"Idempotency-Key": "scope-1"})
    assert reply.status == 403
    assert reply.code == "insufficient_scope"
    assert reply.json["error"]["missing_scopes"] == ["billing:refund"]
    assert 'error="insufficient_scope"' in reply.headers["WWW-Authenticate"]
    assert one_decision(gateway, reply)["stage"] == "scopes"


def test_missing_idempotency_key(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/billing/refunds", token=token, body=REFUND)
    assert reply.status == 400
    assert reply.code == "idempotency_key_required"


def test_overlong_idempotency_key(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/billing/refunds", token=token, body=REFUND,
                         headers={"Idempotency-Key": "k" * 256})
    assert reply.status == 400
    assert reply.code == "idempotency_key_invalid"


def test_schema_invalid(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/billing/refunds", token=token,
                         body={**REFUND, "amount": "lots"}, headers={"Idempotency-Key": "s-1"})
    assert reply.status == 422
    assert reply.code == "schema_invalid"
    assert reply.json["error"]["details"][0]["path"] == "/amount"


def test_body_too_large(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/echo/items", token=token,
                         raw_body=b'{"name": "' + b"x" * 1_100_000 + b'", "count": 1}')
    assert reply.status == 413
    assert reply.code == "body_too_large"
    assert one_decision(gateway, reply)["stage"] == "parse"


@pytest.mark.parametrize("raw", [
    b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe",
    # One meaning only: the upstream gets these bytes, so a repeated name (which parsers
    # resolve differently) or a non-JSON constant is refused before anything looks at it.
    b'{"name": "a", "count": 5000, "count": 10}',
    b'{"name": "a", "count": 1, "nested": {"secret": "x", "secret": "y"}}',
    b'{"name": "a", "count": NaN}',
    b'{"name": "a", "count": 1e400}',
    b'{"name": "a", "count": 100000000000000000000000}',
    b'{"name": "\\ud800", "count": 1}',
    b'{"name": "a", "count": 1, "nested": ' + b'[' * 300 + b']' * 300 + b'}',
])
def test_invalid_json(gateway: Gateway, token: str, raw: bytes) -> None:
    reply = gateway.call("POST", "/echo/items", token=token, raw_body=raw)
    assert reply.status == 400
    assert reply.code == "invalid_json"


def test_argument_given_twice_is_invalid_arguments(gateway: Gateway, token: str) -> None:
    reply = gateway.call("GET", "/echo/items/abc?item_id=other", token=token)
    assert reply.status == 400
    assert reply.code == "invalid_arguments"
    reply = gateway.call("GET", "/echo/items/abc?q=1&q=2", token=token)
    assert reply.status == 400
    assert reply.code == "invalid_arguments"


def test_upstream_down_is_502_with_an_outcome_record(gateway: Gateway, token: str) -> None:
    reply = gateway.call("GET", "/echo/down", token=token)
    assert reply.status == 502
    assert reply.code == "upstream_error"
    assert reply.headers["X-Toolgate-Decision"] == "allow"
    assert one_decision(gateway, reply)["action"] == "allow"
    [outcome] = outcomes(gateway, reply)
    assert outcome["error"] == "upstream_error"
    assert outcome["upstream_status"] is None


def test_upstream_slow_is_504_with_an_outcome_record(gateway: Gateway, token: str) -> None:
    reply = gateway.call("GET", "/echo/slow", token=token, headers={"X-Delay": "2"})
    assert reply.status == 504
    assert reply.code == "upstream_timeout"
    [outcome] = outcomes(gateway, reply)
    assert outcome["error"] == "upstream_timeout"


def test_shadow_mode_decides_and_audits_but_never_forwards(
        gateway: Gateway, upstream: Upstream, token: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("POST", "/echo/shadow", token=token, body={"x": 1})
    assert reply.status == 200
    assert reply.json == {"status": "shadow", "action": "allow",
                          "reasons": [reply.json["reasons"][0]]}
    assert reply.headers["X-Toolgate-Decision"] == "shadow"
    assert len(upstream.seen) == before
    decision = one_decision(gateway, reply)
    assert decision["shadow"] is True
    assert outcomes(gateway, reply) == []


def test_every_response_carries_request_id_and_decision(gateway: Gateway,
                                                        token: str) -> None:
    for reply in (gateway.call("GET", "/orders/ord_1234?tenant_id=acme", token=token),
                  gateway.call("GET", "/nowhere", token=token),
                  gateway.call("GET", "/orders/ord_1234")):
        assert reply.request_id.startswith("req_")
        assert reply.headers["X-Toolgate-Decision"] in {"allow", "deny"}


def test_admin_health_and_readiness(gateway: Gateway) -> None:
    assert request(gateway.admin_port, "GET", "/healthz").status == 200
    ready = request(gateway.admin_port, "GET", "/readyz")
    assert ready.status == 200
    assert ready.json["tools"] == 11
    if gateway.opa is not None:   # OPA names its bundle's revision
        assert ready.json["policy_revision"] == gateway.opa.revision
        assert ready.json["revisions"]["policies"] == gateway.opa.revision
    else:
        assert len(ready.json["policy_revision"]) == 16


def test_metrics_count_calls_by_tool_and_action(gateway: Gateway, token: str) -> None:
    gateway.call("GET", "/orders/ord_1234?tenant_id=acme", token=token)
    gateway.call("PUT", "/payroll/employees/emp_0042/bank-account", token=token,
                 body={"tenant_id": "acme", "iban": "DE89370400440532013000"},
                 headers={"Idempotency-Key": "metrics-1"})
    gateway.call("POST", "/echo/items", token=token, body={"count": "x"})
    reply = request(gateway.admin_port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.raw.decode()

    def value(line_start: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    assert value('toolgate_calls_total{action="allow",code="",tool="get_order"}') >= 1
    assert value('toolgate_calls_total{action="deny",code="policy_denied",'
                 'tool="change_payroll_bank"}') >= 1
    assert value('toolgate_schema_checks_total{result="invalid",tool="echo_post"}') >= 1
    assert value('toolgate_upstream_responses_total{status_class="2xx",tool="get_order"}') >= 1
    assert value('toolgate_time_to_safe_fallback_seconds_count{action="deny"}') >= 1
    assert value("toolgate_policy_latency_seconds_count") >= 1
    assert value('toolgate_gateway_overhead_seconds_count{tool="get_order"}') >= 1
    # Every stage a call reached is timed; the invalid echo call stopped at `validate`.
    authenticated = value('toolgate_stage_seconds_count{stage="authenticate"}')
    validated = value('toolgate_stage_seconds_count{stage="validate"}')
    assert authenticated >= validated >= 3
    assert value('toolgate_stage_seconds_count{stage="commit"}') < validated
    assert value('toolgate_stage_seconds_count{stage="decision_record"}') >= 3
    assert value('toolgate_stage_seconds_sum{stage="policy"}') > 0


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/json", "Content-Encoding": "gzip"},
])
def test_a_body_must_be_plain_json(gateway: Gateway, upstream: Upstream, token: str,
                                   headers: dict[str, str]) -> None:
    """The upstream reads the bytes by their Content-Type: anything but JSON would let it
    see arguments the gateway never checked (amount=5000 hidden in a JSON string)."""
    before = len(upstream.seen)
    body = (b'{"name": "a&count=5000", "count": 1}')
    reply = gateway.call("POST", "/echo/items", token=token, raw_body=body, headers=headers)
    assert (reply.status, reply.code) == (415, "unsupported_media_type")
    assert len(upstream.seen) == before
    assert one_decision(gateway, reply)["stage"] == "parse"


def test_a_body_cut_short_is_refused_and_recorded(gateway: Gateway, token: str) -> None:
    """The client promises 100 bytes, sends 10 and hangs up: nothing is forwarded, and the
    refusal is a decision record like any other (never an unhandled 500)."""
    before = len(gateway.records())
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(b"POST /echo/items HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + token.encode() + b"\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  b'{"name": "')
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(gateway.records()) == before:
        time.sleep(0.05)
    [record] = gateway.records()[before:]
    assert (record["kind"], record["stage"], record["code"], record["tool"]) == (
        "decision", "parse", "invalid_json", "echo_post")
