"""Fail closed on every policy failure: malformed output, engine error, undefined decision
and a decision too slow for `policy.timeout_ms` — each audited at stage `policy`, none
forwarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.conftest import HERE
from tests.e2e.harness import Gateway, Upstream, running


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
           repo_root: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("broken"), dev_key, upstream.url,
                 tool_specs=[HERE / "specs"], policies=[HERE / "policies_broken"],
                 extra={"policy": {"timeout_ms": 100}})
    with running(gw):
        yield gw


def test_control_case_is_allowed(broken: Gateway, token: str) -> None:
    assert broken.call("GET", "/echo/items/abc", token=token).status == 200


@pytest.mark.parametrize(("method", "path", "body", "why"), [
    ("POST", "/echo/items", {"name": "a", "count": 1}, "no valid action"),
    ("GET", "/echo/status/200", None, "evaluation error"),
    ("GET", "/echo/down", None, "undefined"),
])
def test_malformed_or_failed_policy_is_deny_policy_error(
        broken: Gateway, upstream: Upstream, token: str, method: str, path: str,
        body: object, why: str) -> None:
    before = len(upstream.seen)
    reply = broken.call(method, path, token=token, body=body)
    assert reply.status == 403, reply.raw
    assert reply.code == "policy_denied"
    reasons = reply.json["error"]["reasons"]
    assert reasons[0] == "policy_error"
    assert why in reasons[1]
    assert len(upstream.seen) == before
    [decision] = broken.records_for(reply.request_id)
    assert decision["stage"] == "policy"
    assert decision["action"] == "deny"


def test_slow_policy_is_503_policy_unavailable(broken: Gateway, upstream: Upstream,
                                               token: str) -> None:
    before = len(upstream.seen)
    reply = broken.call("GET", "/echo/slow", token=token, timeout=30)
    assert reply.status == 503
    assert reply.code == "policy_unavailable"
    assert len(upstream.seen) == before
    [decision] = broken.records_for(reply.request_id)
    assert decision["stage"] == "policy"
    assert decision["code"] == "policy_unavailable"
    # The engine answers again afterwards.
    assert broken.call("GET", "/echo/items/abc", token=token).status == 200


@pytest.fixture(scope="module")
def fail_open(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
              repo_root: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("fail_open"), dev_key, upstream.url,
                 tool_specs=[HERE / "specs"], policies=[HERE / "policies_broken"],
                 extra={"policy": {"timeout_ms": 100}, "fail_open": True})
    with running(gw):
        yield gw


def test_fail_open_allows_only_when_the_engine_cannot_answer(
        fail_open: Gateway, upstream: Upstream, token: str) -> None:
    before = len(upstream.seen)
    reply = fail_open.call("GET", "/echo/slow", token=token, headers={"X-Delay": "0"},
                           timeout=30)
    assert reply.status == 200, reply.raw
    assert len(upstream.seen) == before + 1
    [decision] = [r for r in fail_open.records_for(reply.request_id)
                  if r["kind"] == "decision"]
    assert decision["reasons"] == ["fail_open"]
    # A policy that answered (even malformed) is not "unavailable": still denied.
    assert fail_open.call("POST", "/echo/items", token=token,
                          body={"name": "a", "count": 1}).status == 403
    assert "fail_open is set" in fail_open.log()


def test_shadow_tool_reports_a_failed_policy_instead_of_refusing(
        broken: Gateway, upstream: Upstream, token: str) -> None:
    before = len(upstream.seen)
    reply = broken.call("POST", "/echo/shadow", token=token, body={})
    assert reply.status == 200
    assert reply.json["action"] == "deny"
    assert reply.json["reasons"][0] == "policy_error"
    assert reply.headers["X-Toolgate-Decision"] == "shadow"
    assert len(upstream.seen) == before
