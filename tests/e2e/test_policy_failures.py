"""Fail closed on every policy failure: malformed output, engine error, undefined decision
— each audited at stage `policy`, none forwarded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream, running
from tests.e2e.profiles import broken_policy_gateway


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
           upstream: Upstream) -> Iterator[Gateway]:
    gw = broken_policy_gateway(tmp_path_factory.mktemp("broken"), dev_key, upstream)
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


# A policy slower than policy.timeout_ms (503 policy_unavailable) and fail_open are shown
# with the injected clock, deterministically: tests/pipeline/test_policy.py.


def test_shadow_tool_reports_a_failed_policy_instead_of_refusing(
        broken: Gateway, upstream: Upstream, token: str) -> None:
    before = len(upstream.seen)
    reply = broken.call("POST", "/echo/shadow", token=token, body={})
    assert reply.status == 200
    assert reply.json["action"] == "deny"
    assert reply.json["reasons"][0] == "policy_error"
    assert reply.headers["X-Toolgate-Decision"] == "shadow"
    assert len(upstream.seen) == before
