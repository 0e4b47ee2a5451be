"""The audit log through a real gateway: one decision record per call on every path, one
outcome record per call that reached an upstream, no secrets — and when the sink cannot be
written, nothing is forwarded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import UPSTREAM_SECRET, Gateway, Reply, Upstream, running
from tests.e2e.profiles import audit_gateway
from tests.support import unwritable

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
          "customer_email": "ada@example.com"}


def every_outcome(gw: Gateway, token: str, key: DevKey, walk: str) -> list[tuple[str, Reply]]:
    """One call per outcome row; (expected kind of action, reply). Idempotency keys are
    `<walk>-<n>`: the gateway is shared by the session, so each test walks with keys of its
    own, or a second walk would be answered from the first one's keys (replays)."""
    refund_key = iter(f"{walk}-{i}" for i in range(100))
    return [
        ("forwarded", gw.call("POST", "/billing/refunds", token=token,
                              body={**REFUND, "amount": 10},
                              headers={"Idempotency-Key": next(refund_key)})),
        ("queued", gw.call("POST", "/billing/refunds", token=token,
                           body={**REFUND, "amount": 900},
                           headers={"Idempotency-Key": next(refund_key)})),
        ("denied", gw.call("PUT", "/payroll/employees/emp_0042/bank-account", token=token,
                           body={"tenant_id": "acme", "iban": "DE89370400440532013000"},
                           headers={"Idempotency-Key": next(refund_key)})),
        ("denied", gw.call("GET", "/nope", token=token)),
        ("denied", gw.call("GET", "/orders/ord_1234?tenant_id=acme")),
        ("denied", gw.call("GET", "/orders/ord_1234?tenant_id=acme",
                           token=key.token("x", tenant="acme", scopes=[]))),
        ("denied", gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                           headers={"Idempotency-Key": next(refund_key)})),
        ("denied", gw.call("POST", "/billing/refunds", token=token,
                           body={**REFUND, "amount": 1})),
        ("denied", gw.call("POST", "/echo/items", token=token, raw_body=b"{")),
        ("denied", gw.call("GET", "/echo/items/%2e%2e", token=token)),
        ("forwarded", gw.call("GET", "/echo/down", token=token)),
        ("forwarded", gw.call("GET", "/echo/slow", token=token, headers={"X-Delay": "1"})),
        ("forwarded", gw.call("GET", "/echo/status/500", token=token)),
        ("shadow", gw.call("POST", "/echo/shadow", token=token, body={})),
    ]


def test_one_decision_record_per_call_and_one_outcome_per_action(
        gateway: Gateway, token: str, dev_key: DevKey) -> None:
    replies = every_outcome(gateway, token, dev_key, "walk-records")
    records = gateway.records()
    for kind, reply in replies:
        mine = [r for r in records if r["decision_id"] == reply.request_id]
        counts = Counter(r["kind"] for r in mine)
        assert counts["decision"] == 1, (kind, reply.status, mine)
        assert counts["outcome"] == (1 if kind == "forwarded" else 0), (kind, mine)
        if kind == "queued":  # held, not executed: the queue's record, outcome later
            assert [r.get("event") for r in mine if r["kind"] == "approval"] == ["queued"]
        decision = next(r for r in mine if r["kind"] == "decision")
        assert decision["stage"]
        assert decision["policy_revision"]
        assert mine[0]["kind"] == "decision", "the decision is written before the outcome"


def test_no_secret_in_the_audit_log(gateway: Gateway, token: str, dev_key: DevKey) -> None:
    every_outcome(gateway, token, dev_key, "walk-secrets")
    text = gateway.audit_file.read_text()
    assert UPSTREAM_SECRET not in text
    assert token not in text
    assert token.split(".")[2] not in text  # not even the signature
    assert "ada@example.com" not in text, "x-pii arguments are redacted"
    assert "[REDACTED]" in text


@pytest.fixture
def sink_gateway(tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> Iterator[Gateway]:
    """A gateway of its own, started normally: the test makes its audit file unwritable."""
    with running(audit_gateway(tmp_path / "gw", dev_key, upstream)) as gw:
        yield gw


def test_audit_sink_down_forwards_nothing(sink_gateway: Gateway, upstream: Upstream,
                                          token: str) -> None:
    gw = sink_gateway
    before = len(upstream.seen)
    with unwritable(gw.audit_file):   # chattr +i: every write fails, the open file's too
        replies = [gw.call(method, path, token=token, body=body, headers=headers)
                   for method, path, body, headers in [
                       ("GET", "/echo/items/abc", None, {}),
                       ("POST", "/echo/items", {"name": "a", "count": 1}, {}),
                       ("POST", "/billing/refunds", {**REFUND, "amount": 900},
                        {"Idempotency-Key": "sink-down"})]]
        assert [(r.status, r.code) for r in replies] == [(503, "audit_unavailable")] * 3
        assert len(upstream.seen) == before
    assert (f"audit sink {gw.audit_file} cannot be written (EPERM): calls are refused until "
            "it can") in gw.log()
    refused = {r.request_id for r in replies}
    assert [r for r in gw.records() if r["decision_id"] in refused] == []
    assert [r for r in gw.records() if r["kind"] == "approval"] == [], "nothing was queued"
