"""A real gateway with `policy.engine: opa` when its OPA server misbehaves: down, slow or
failing is a 503 `policy_unavailable` with its record and an unready `/readyz`, and the
gateway recovers by itself; the revision OPA names is the records' `policy_revision`;
reloads beside OPA. (The rest of the end-to-end suite runs against OPA too: conftest.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, request, running
from tests.e2e.opa import HAVE_OPA
from tests.e2e.profiles import SHIPPED_POLICIES, SHIPPED_SPECS

pytestmark = [pytest.mark.one_engine,
              pytest.mark.skipif(not HAVE_OPA, reason="the real OPA engine is not installed "
                                 "(opa-golib-python-bindings: see the README)")]

ORDER = "/orders/ord_1234?tenant_id=acme"
REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
          "reason": "damaged", "amount": 250}


@pytest.fixture
def gw(tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path, dev_key, upstream.url, tool_specs=[SHIPPED_SPECS],
                      policies=[SHIPPED_POLICIES], engine="opa",
                      extra={"policy": {"timeout_ms": 1000}})
    with running(gateway):
        yield gateway


def _opa(gw: Gateway) -> Gateway:
    assert gw.opa is not None
    return gw


def _decision(gw: Gateway, request_id: str) -> dict[str, object]:
    [record] = [r for r in gw.records_for(request_id) if r["kind"] == "decision"]
    return record


def _unready(gw: Gateway) -> Reply:
    """/readyz turns 503 (it asks OPA at most once a second, so not at once)."""
    return wait_for(lambda: (r := request(gw.admin_port, "GET", "/readyz")).status == 503
                    and r, what="an unready /readyz")


def _unavailable(gw: Gateway, upstream: Upstream, token: str) -> None:
    """A call now is a 503 `policy_unavailable`, recorded, and never reaches the upstream."""
    before = len(upstream.seen)
    reply = gw.call("GET", ORDER, token=token)
    assert (reply.status, reply.code) == (503, "policy_unavailable"), reply.raw
    record = _decision(gw, reply.request_id)
    assert (record["action"], record["code"], record["stage"]) == (
        "deny", "policy_unavailable", "policy")
    assert len(upstream.seen) == before


def test_opa_down_is_503_and_unready_until_it_is_back(gw: Gateway, upstream: Upstream,
                                                     token: str) -> None:
    opa = _opa(gw).opa
    assert opa is not None
    assert gw.call("GET", ORDER, token=token).status == 200
    opa.stop()
    _unavailable(gw, upstream, token)
    ready = _unready(gw)
    assert any("cannot be reached" in p for p in ready.json["policy"]), ready.json
    opa.start()
    gw.wait_ready()
    assert gw.call("GET", ORDER, token=token).status == 200


def test_opa_too_slow_is_503(gw: Gateway, upstream: Upstream, token: str) -> None:
    opa = _opa(gw).opa
    assert opa is not None
    opa.set(delay_ms=5000)      # the gateway waits 1000 ms
    _unavailable(gw, upstream, token)
    _unready(gw)
    opa.set(delay_ms=0)
    gw.wait_ready()
    assert gw.call("GET", ORDER, token=token).status == 200


def test_opa_answers_that_are_not_decisions(gw: Gateway, upstream: Upstream,
                                            token: str) -> None:
    opa = _opa(gw).opa
    assert opa is not None
    opa.set(status=502)         # a proxy in front of OPA: no answer from OPA at all
    _unavailable(gw, upstream, token)
    opa.set(status=500)         # OPA's own evaluation error: the policy failed, deny
    reply = gw.call("GET", ORDER, token=token)
    assert (reply.status, reply.code) == (403, "policy_denied")
    assert reply.json["error"]["reasons"][0] == "policy_error"
    opa.set(status=200)
    assert gw.call("GET", ORDER, token=token).status == 200


def test_the_revision_is_the_one_opa_names(gw: Gateway, token: str) -> None:
    opa = _opa(gw).opa
    assert opa is not None
    first = gw.call("GET", ORDER, token=token)
    assert _decision(gw, first.request_id)["policy_revision"] == "bundle-r1"
    opa.set(revision="bundle-r2")   # OPA activated another bundle
    held = gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                   headers={"Idempotency-Key": "opa-rev-1"})
    assert held.status == 202, held.raw
    records = gw.records_for(held.request_id)
    assert {r["policy_revision"] for r in records} == {"bundle-r2"}
    # /readyz asks OPA at most once a second: it shows the new revision from then on.
    ready = wait_for(lambda: (r := request(gw.admin_port, "GET", "/readyz")).json[
        "policy_revision"] == "bundle-r2" and r, what="/readyz showing bundle-r2")
    assert ready.json["revisions"]["policies"] == "bundle-r2"


def test_reload_beside_opa_probes_opa(gw: Gateway, dev_key: DevKey, token: str) -> None:
    opa = _opa(gw).opa
    assert opa is not None
    alice = approver(dev_key, "alice")
    unchanged = admin(gw, "POST", "/v1/policy/reload", alice)
    assert (unchanged.status, unchanged.json["status"]) == (200, "unchanged")
    opa.set(status=502)
    refused = admin(gw, "POST", "/v1/policy/reload", alice)
    assert (refused.status, refused.json["error"]["code"]) == (422, "bundle_invalid")
    assert any("HTTP 502" in e for e in refused.json["error"]["errors"]), refused.json
    opa.set(status=200)
    assert gw.call("GET", ORDER, token=token).status == 200
    reloads = [r for r in gw.records() if r["kind"] == "policy_reload"]
    assert [r["event"] for r in reloads] == ["unchanged", "refused"]
