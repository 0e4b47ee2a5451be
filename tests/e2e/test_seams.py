"""The holes that lived in the gateway's seams (issue: one house for every entrance), each
tried as a hostile agent or approver would, through a real `toolgate serve`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver
from tests.e2e.harness import UPSTREAM_SECRET, Gateway, Reply, Upstream, running
from tests.e2e.profiles import approvals_gateway

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}
# Headers an agent could send to pose as someone else, or to steer the upstream.
FORGED = {
    "X-Forwarded-User": "admin", "X-Forwarded-Email": "ceo@example.com",
    "X-Forwarded-Groups": "admins", "X-Forwarded-Client-Cert": "Hash=ab;Subject=CN=admin",
    "X-Forwarded-Host": "internal.example", "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443", "Forwarded": "for=10.0.0.1;host=internal.example",
    "X-Real-IP": "10.0.0.1", "X-Client-IP": "10.0.0.1", "True-Client-IP": "10.0.0.1",
    "X-Auth-Request-User": "admin", "X-Remote-User": "admin", "Remote-User": "admin",
    "X-User-Id": "1", "X-Override-Limit": "true", "X-Original-URL": "/admin",
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
       upstream: Upstream) -> Iterator[Gateway]:
    with running(approvals_gateway(tmp_path_factory.mktemp("seams"), dev_key,
                                   upstream)) as gateway:
        yield gateway


def received(upstream: Upstream, key: str) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in s.headers.items()} for s in upstream.seen
            if s.headers.get("Idempotency-Key") == key]


def test_forged_identity_headers_never_reach_the_upstream(gw: Gateway, upstream: Upstream,
                                                         token: str) -> None:
    reply = gw.call("POST", "/billing/refunds", token=token, body={**REFUND, "amount": 20},
                    headers={**FORGED, "Idempotency-Key": "forged-1",
                             "Host": "evil.example"})
    assert reply.status == 201, reply.raw
    [headers] = received(upstream, "forged-1")
    for name in FORGED:
        if name.lower() in ("x-forwarded-host", "x-forwarded-proto"):
            continue
        assert name.lower() not in headers, name
    # The gateway's own forwarding headers, never the agent's.
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"


def test_an_approved_call_sends_exactly_what_the_approver_saw(
        gw: Gateway, upstream: Upstream, token: str, dev_key: DevKey) -> None:
    held = gw.call("POST", "/billing/refunds", token=token, body={**REFUND, "amount": 250},
                   headers={**FORGED, "Idempotency-Key": "seen-1",
                            "Accept-Language": "de-CH"})
    assert held.status == 202, held.raw
    alice = approver(dev_key, "alice", "billing-approver")
    shown = admin(gw, "GET", f"/v1/approvals/{held.json['approval_id']}", alice).json
    call = shown["call"]
    assert (call["upstream"], call["method"], call["path"]) == ("billing", "POST",
                                                                "/v1/refunds")
    shown_headers = {k.lower(): v for k, v in call["headers"].items()}
    assert "x-override-limit" not in shown_headers
    assert shown_headers["accept-language"] == "de-CH"
    done = admin(gw, "POST", f"/v1/approvals/{held.json['approval_id']}/approve", alice)
    assert done.json["status"] == "executed", done.raw
    [sent] = [s for s in upstream.seen if s.headers.get("Idempotency-Key") == "seen-1"]
    sent_headers = {k.lower(): v for k, v in sent.headers.items()}
    for name in FORGED:  # none of them was shown, so none of them may be sent
        if name.lower() not in ("x-forwarded-host", "x-forwarded-proto"):
            assert name.lower() not in sent_headers, name
    # Everything the upstream got was shown, except what HTTP itself adds and the injected
    # credential, which the view names but never shows.
    transport = {"host", "content-length", call["credential_header"].lower()}
    assert {k: v for k, v in sent_headers.items() if k not in transport} == shown_headers
    assert sent.body.decode() == call["body"]
    assert sent.raw_path == call["path"] + (f"?{call['query']}" if call["query"] else "")


@pytest.mark.parametrize("tenant", ["globex", None])
def test_the_requester_never_decides_its_own_call_through_another_tenant(
        gw: Gateway, upstream: Upstream, token: str, dev_key: DevKey,
        tenant: str | None) -> None:
    key = f"self-{tenant}"
    held = gw.call("POST", "/billing/refunds", token=token, body={**REFUND, "amount": 250},
                   headers={"Idempotency-Key": key})
    assert held.status == 202, held.raw
    # The requester's own sub, with another tenant (or none), and every right an approver has.
    me = dev_key.token("svc-agent", tenant=tenant, roles=["billing-approver"],
                       scopes=["toolgate:approve"])
    approval = held.json["approval_id"]
    for verb, body in (("approve", {}), ("reject", {"reason": "mine"})):
        reply = admin(gw, "POST", f"/v1/approvals/{approval}/{verb}", me, body)
        assert (reply.status, reply.code) == (403, "self_approval"), reply.raw
    alice = approver(dev_key, "alice", "billing-approver")
    assert admin(gw, "GET", f"/v1/approvals/{approval}", alice).json["status"] == "pending"
    assert received(upstream, key) == []


def test_a_key_is_executed_once_or_held_once_never_both(
        gw: Gateway, upstream: Upstream, token: str, dev_key: DevKey) -> None:
    alice = approver(dev_key, "alice", "billing-approver")
    for round_ in range(3):
        key = f"both-{round_}"
        barrier = threading.Barrier(40)
        replies: list[Reply] = []

        def send(amount: int, key: str = key, barrier: threading.Barrier = barrier,
                 replies: list[Reply] = replies) -> None:
            barrier.wait()
            replies.append(gw.call("POST", "/billing/refunds", token=token,
                                   body={**REFUND, "amount": amount},
                                   headers={"Idempotency-Key": key}, timeout=30))

        threads = [threading.Thread(target=send, args=(120 if i % 2 else 250,))
                   for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        listed: Any = admin(gw, "GET", "/v1/approvals?limit=500", alice).json
        held = [a for a in listed["approvals"] if a["idempotency_key"] == key]
        forwarded = received(upstream, key)
        assert len(held) + len(forwarded) == 1, (round_, len(held), len(forwarded))
        assert len(replies) == 40
        statuses = {r.status for r in replies}
        assert statuses <= {201, 202, 409, 422}, statuses
