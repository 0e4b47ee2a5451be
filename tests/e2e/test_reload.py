"""Hot reload of a real gateway: SIGHUP and `POST /v1/policy/reload` serve a changed
policy from the next call on, refuse a broken one (the old keeps answering), and record
every reload; the endpoint needs the approver scope. The policy files are the gateway's
own, so these run on the embedded engine (reloads beside OPA: tests/e2e/test_opa.py)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Upstream, running
from tests.e2e.profiles import HERE as E2E
from tests.e2e.profiles import SHIPPED_POLICIES, SHIPPED_SPECS

pytestmark = pytest.mark.one_engine

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
          "reason": "damaged", "amount": 150}


@pytest.fixture
def gw(tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> Iterator[tuple[Gateway, Path]]:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    gateway = Gateway(tmp_path / "gw", dev_key, upstream.url, tool_specs=[SHIPPED_SPECS],
                      policies=[policies], engine="embedded")
    with running(gateway):
        yield gateway, policies


def _refund(gw: Gateway, token: str, key: str) -> str:
    reply = gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                    headers={"Idempotency-Key": key})
    return str(reply.headers.get("X-Toolgate-Decision"))


def _stricter(policies: Path) -> None:
    data = policies / "data.yaml"
    data.write_text(data.read_text().replace("max: {USD: 200,", "max: {USD: 100,"))


def _reloads(gw: Gateway) -> list[dict[str, object]]:
    return [r for r in gw.records() if r["kind"] == "policy_reload"]


def test_sighup_reloads_and_a_broken_policy_is_refused(gw: tuple[Gateway, Path],
                                                       token: str) -> None:
    gateway, policies = gw
    before = admin(gateway, "GET", "/readyz", None).json["policy_revision"]
    assert _refund(gateway, token, "a") == "allow"
    _stricter(policies)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGHUP)
    (accepted,) = wait_for(lambda: _reloads(gateway) or None, what="a reload record")
    after = admin(gateway, "GET", "/readyz", None).json["policy_revision"]
    assert (accepted["event"], accepted["trigger"], accepted["previous_revision"],
            accepted["policy_revision"]) == ("accepted", "sighup", before, after)
    assert after != before
    assert _refund(gateway, token, "b") == "require_approval"
    (policies / "broken.rego").write_text("package toolgate\n\ndecision := {\n")
    gateway.proc.send_signal(signal.SIGHUP)
    refused = wait_for(lambda: _reloads(gateway)[1:] or None, what="a refused reload")[0]
    assert (refused["event"], refused["policy_revision"]) == ("refused", after)
    assert gateway.proc.poll() is None, "SIGHUP does not stop the gateway"
    assert _refund(gateway, token, "c") == "require_approval"


def test_the_reload_endpoint_needs_the_approver_scope(gw: tuple[Gateway, Path], token: str,
                                                      dev_key: DevKey) -> None:
    gateway, policies = gw
    assert admin(gateway, "POST", "/v1/policy/reload", token).status == 403
    alice = approver(dev_key, "alice")
    unchanged = admin(gateway, "POST", "/v1/policy/reload", alice)
    assert (unchanged.status, unchanged.json["status"]) == (200, "unchanged")
    _stricter(policies)
    reloaded = admin(gateway, "POST", "/v1/policy/reload", alice)
    assert (reloaded.status, reloaded.json["status"]) == (200, "reloaded")
    assert reloaded.json["policy_revision"] == \
        admin(gateway, "GET", "/readyz", None).json["policy_revision"]
    (policies / "broken.rego").write_text("package toolgate\n\ndecision := {\n")
    refused = admin(gateway, "POST", "/v1/policy/reload", alice)
    assert (refused.status, refused.code) == (422, "bundle_invalid")
    assert "broken.rego" in refused.json["error"]["errors"][0]
    events = [(r["event"], (r["actor"] or {}).get("sub")) for r in _reloads(gateway)]
    assert events == [("unchanged", "alice"), ("accepted", "alice"), ("refused", "alice")]


def test_the_file_watch_reloads_a_change_and_refuses_a_broken_one(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    gateway = Gateway(tmp_path / "gw", dev_key, upstream.url, tool_specs=[SHIPPED_SPECS],
                      policies=[policies], engine="embedded",
                      extra={"policy": {"watch_ms": 100}})
    with running(gateway):
        assert _refund(gateway, token, "w-a") == "allow"
        _stricter(policies)
        (accepted,) = wait_for(lambda: _reloads(gateway) or None, what="a reload record")
        assert (accepted["event"], accepted["trigger"]) == ("accepted", "watch")
        assert _refund(gateway, token, "w-b") == "require_approval"
        (policies / "broken.rego").write_text("package toolgate\n\ndecision := {\n")
        refused = wait_for(lambda: _reloads(gateway)[1:] or None, what="a refused reload")[0]
        assert (refused["event"], refused["trigger"]) == ("refused", "watch")
        assert refused["policy_revision"] == accepted["policy_revision"]
        assert _refund(gateway, token, "w-c") == "require_approval"
        (policies / "broken.rego").unlink()
        mended = wait_for(lambda: _reloads(gateway)[2:] or None, what="a third reload")[0]
        assert (mended["event"], mended["trigger"]) == ("unchanged", "watch")


def test_a_call_in_flight_finishes_on_the_bundle_it_started_with(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    gateway = Gateway(tmp_path / "gw", dev_key, upstream.url,
                      tool_specs=[SHIPPED_SPECS, E2E / "specs"], policies=[policies],
                      engine="embedded")
    with running(gateway), ThreadPoolExecutor(1) as pool:
        before = admin(gateway, "GET", "/readyz", None).json["policy_revision"]
        gate = upstream.gate("reload-in-flight")
        slow = pool.submit(gateway.call, "GET", "/echo/slow", token=token,
                           headers={"X-Gate": "reload-in-flight"})
        gate.wait_arrived()
        _stricter(policies)
        reloaded = admin(gateway, "POST", "/v1/policy/reload", approver(dev_key, "alice"))
        assert reloaded.json["status"] == "reloaded"
        assert _refund(gateway, token, "in-flight-next") == "require_approval"
        gate.open()
        answer = slow.result(timeout=15)
        assert answer.status == 200, answer.raw
        in_flight = gateway.records_for(answer.request_id)
        assert [r["kind"] for r in in_flight] == ["decision", "outcome"]
        assert {r["policy_revision"] for r in in_flight} == {before}
        assert reloaded.json["policy_revision"] != before
