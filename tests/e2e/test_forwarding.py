"""What the upstream receives: the exact body, the declared path, the query string, the
injected credential — and never the agent's own credentials or hop-by-hop headers."""

from __future__ import annotations

import json

from tests.e2e.harness import UPSTREAM_SECRET, Gateway, Upstream

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_credentials_and_headers(gateway: Gateway, upstream: Upstream, token: str) -> None:
    raw = b'{"name":  "exact bytes", "count": 3}'
    reply = gateway.call("POST", "/echo/items", token=token, raw_body=raw, headers={
        "Idempotency-Key": "fwd-headers-1", "traceparent": TRACEPARENT,
        "tracestate": "vendor=1", "Cookie": "session=agent-cookie",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==", "X-Forwarded-For": "6.6.6.6",
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "hop",
        "TE": "trailers", "X-Custom": "kept", "X-HTTP-Method-Override": "DELETE",
        "X-Original-URL": "/admin", "X-Not-Listed": "dropped", "Accept": "application/json"})
    assert reply.status == 200, reply.raw
    seen = upstream.seen[-1]
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert seen.raw_path == "/v1/items"
    assert seen.body == raw, "the upstream gets the body exactly as the agent sent it"
    assert headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert token not in json.dumps(dict(seen.headers))
    for stripped in ("cookie", "proxy-authorization", "x-secret-hop", "te",
                     "x-http-method-override", "x-original-url", "x-not-listed", "connection",
                     "user-agent", "accept-encoding"):
        assert stripped not in headers, stripped
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-request-id"] == reply.request_id
    assert headers["idempotency-key"] == "fwd-headers-1"
    assert headers["traceparent"] == TRACEPARENT
    assert headers["tracestate"] == "vendor=1"
    assert headers["x-custom"] == "kept"  # the spec lists it in forward.headers
    assert headers["accept"] == "application/json"
    [decision] = [r for r in gateway.records_for(reply.request_id) if r["kind"] == "decision"]
    assert decision["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_query_string_and_path_parameters(gateway: Gateway, upstream: Upstream,
                                          token: str) -> None:
    reply = gateway.call("GET", "/echo/items/it%C3%A9m-1?q=a%20b", token=token)
    assert reply.status == 200
    assert upstream.seen[-1].raw_path == "/v1/items/it%C3%A9m-1?q=a%20b"
    [decision] = [r for r in gateway.records_for(reply.request_id) if r["kind"] == "decision"]
    assert decision["args"] == {"item_id": "itém-1", "q": "a b"}


def test_response_hop_by_hop_headers_are_not_passed_back(gateway: Gateway,
                                                         token: str) -> None:
    reply = gateway.call("POST", "/billing/refunds", token=token,
                         body={"tenant_id": "acme", "order_id": "ord_1234", "amount": 5,
                               "currency": "USD"}, headers={"Idempotency-Key": "hop-back"})
    assert reply.status == 201
    assert reply.headers["X-Upstream"] == "billing"
    assert "Proxy-Authenticate" not in reply.headers
    assert reply.headers.get("Keep-Alive") != "timeout=99"
    assert reply.headers["Content-Type"].startswith("application/json")


def test_idempotency_key_not_forwarded_for_tools_without_idempotency(
        gateway: Gateway, upstream: Upstream, token: str) -> None:
    reply = gateway.call("GET", "/echo/items/x", token=token,
                         headers={"Idempotency-Key": "ignored"})
    assert reply.status == 200
    assert "idempotency-key" not in {k.lower() for k in upstream.seen[-1].headers}
