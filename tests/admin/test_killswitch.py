"""The kill switch endpoints through a real `toolgate serve`: a switch must name a loaded
tool or a known tenant (422 `unknown_scope`, unless `force`), an agent never seen is set
with a warning, and every refusal of an approver's request is a `killswitch` record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Reply, Upstream, request, running
from tests.e2e.profiles import default_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey) -> Iterator[Gateway]:
    upstream = Upstream()
    upstream.start()
    gateway = default_gateway(tmp_path_factory.mktemp("killswitch"), dev_key, upstream)
    gateway.extra = {"budgets": {"tenants": {"initech": {"max_tool_calls": 10}}}}
    try:
        with running(gateway):
            yield gateway
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def ops(dev_key: DevKey) -> str:
    return dev_key.token("ops-oncall", tenant="acme", roles=["sre"],
                         scopes=["toolgate:approve"])


def kill(gw: Gateway, token: str, scope: str, **more: Any) -> Reply:
    return request(gw.admin_port, "POST", "/v1/killswitch", token=token,
                   body={"scope": scope, "reason": "incident 12", **more})


def revive(gw: Gateway, token: str, scope: str) -> Reply:
    return request(gw.admin_port, "DELETE", f"/v1/killswitch/{scope}", token=token)


def switches(gw: Gateway, token: str) -> list[str]:
    reply = request(gw.admin_port, "GET", "/v1/killswitch", token=token)
    assert reply.status == 200
    return [k["scope"] for k in reply.json["killswitches"]]


def last_record(gw: Gateway) -> dict[str, Any]:
    return [r for r in gw.records() if r["kind"] == "killswitch"][-1]


def test_a_tool_that_is_not_loaded_is_refused_naming_the_loaded_ones(gw: Gateway,
                                                                     ops: str) -> None:
    reply = kill(gw, ops, "tool:echo_itme")
    assert (reply.status, reply.code) == (422, "unknown_scope")
    error = reply.json["error"]
    assert "echo_item" in error["known"] and "create_refund_request" in error["known"]
    assert "did you mean tool:echo_item," in error["message"]
    assert switches(gw, ops) == []
    record = last_record(gw)
    assert (record["event"], record["code"], record["scope"]) == (
        "refused", "unknown_scope", "tool:echo_itme")
    assert record["actor"]["sub"] == "ops-oncall"


def test_force_sets_it_and_the_record_says_so(gw: Gateway, ops: str) -> None:
    reply = kill(gw, ops, "tool:tomorrows_tool", force=True)
    assert reply.status == 200, reply.raw
    try:
        assert (last_record(gw)["event"], last_record(gw)["force"]) == ("set", True)
        assert "tool:tomorrows_tool" in switches(gw, ops)
        # A scope with a switch in force is known: changing its reason needs no force.
        assert kill(gw, ops, "tool:tomorrows_tool").status == 200
    finally:
        assert revive(gw, ops, "tool:tomorrows_tool").status == 200


def test_force_must_be_a_boolean(gw: Gateway, ops: str) -> None:
    reply = kill(gw, ops, "tool:tomorrows_tool", force="yes")
    assert (reply.status, reply.code) == (400, "invalid_arguments")
    assert (last_record(gw)["event"], last_record(gw)["code"]) == ("refused",
                                                                   "invalid_arguments")


def test_tenants_are_known_from_the_config_and_the_store(gw: Gateway, ops: str,
                                                         dev_key: DevKey) -> None:
    reply = kill(gw, ops, "tenant:umbrella")
    assert (reply.status, reply.code) == (422, "unknown_scope")
    assert reply.json["error"]["configured"] == ["initech"]
    for tenant in ("initech", "umbrella"):
        if tenant == "umbrella":   # a call with a key leaves a trace of its tenant
            agent = dev_key.token("svc-u", agent="u-bot", tenant="umbrella",
                                  scopes=["echo:write"])
            assert gw.call("POST", "/echo/items", token=agent, body={"name": "a", "count": 1},
                           headers={"Idempotency-Key": "seen-1"}).status == 200
        reply = kill(gw, ops, f"tenant:{tenant}")
        assert reply.status == 200, reply.raw
        assert "warning" not in reply.json
        assert revive(gw, ops, f"tenant:{tenant}").status == 200


def test_an_agent_never_seen_is_set_with_a_warning(gw: Gateway, ops: str) -> None:
    reply = kill(gw, ops, "agent:suport-bot")
    assert reply.status == 200, reply.raw
    try:
        assert "agent 'suport-bot'" in reply.json["warning"]
        record = last_record(gw)
        assert (record["event"], record["warning"]) == ("set", reply.json["warning"])
    finally:
        assert revive(gw, ops, "agent:suport-bot").status == 200


def test_reviving_a_switch_that_is_not_set_is_404_and_recorded(gw: Gateway, ops: str) -> None:
    reply = revive(gw, ops, "tool:echo_item")
    assert (reply.status, reply.code) == (404, "not_found")
    record = last_record(gw)
    assert (record["event"], record["code"], record["scope"]) == ("refused", "not_found",
                                                                  "tool:echo_item")


def test_global_needs_no_target(gw: Gateway, ops: str, dev_key: DevKey) -> None:
    assert kill(gw, ops, "global").status == 200
    try:
        agent = dev_key.token("svc", tenant="acme", scopes=["echo:read"])
        assert gw.call("GET", "/echo/items/a", token=agent).code == "killed"
    finally:
        assert revive(gw, ops, "global").status == 200
