"""`toolgate approvals`: `show` prints the held call in full — everything that will be
sent, with the agent's text escaped so it cannot pose as something else on a terminal — and
`approve` says by its exit status whether the approved call ran."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from gateway.cli.approvals import details
from gateway.devtokens import DevKey
from tests.approvals.test_rules import held
from tests.e2e.approvals_support import wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, request, running, toolgate_command
from tests.e2e.profiles import HERE as E2E
from tests.e2e.profiles import SHIPPED_POLICIES, SHIPPED_SPECS


def shown(body: str, headers: dict[str, str]) -> str:
    view = held().public("Authorization")
    view["call"] = {**view["call"], "body": body, "headers": headers}
    return details(view)


def test_every_part_of_the_call_is_shown() -> None:
    text = shown('{"amount": 250}', {"Content-Type": "application/json",
                                     "X-Request-Id": "req_1"})
    assert "call         POST /v1/refunds to upstream billing" in text
    assert "  Content-Type: application/json" in text
    assert "  X-Request-Id: req_1" in text
    assert "  Authorization: (the upstream credential, added by the gateway)" in text
    assert 'body: "{\\"amount\\": 250}"' in text


def test_the_agent_s_text_cannot_break_lines_or_turn_around() -> None:
    text = shown('{"note": "ok\u2028amount: 1\u202e"}', {"Accept-Language": "de\u2029x"})
    body_lines = [ln for ln in text.splitlines() if "body:" in ln]
    assert len(body_lines) == 1
    assert "\\u2028" in body_lines[0]
    assert "\\u202e" in body_lines[0]
    assert "\u2029" not in text and "\u2028" not in text and "\u202e" not in text


# -- the exit status of approve: did the approved call run? -----------------------------------
# A real `toolgate serve` and the CLI as a user runs it. Tools of this module (yellow, no
# limit: every call is held): one whose upstream holds the request until the test opens a
# gate and times out after 300 ms (`failed`), one on an upstream nothing listens on
# (`not_sent`: it could not be connected to).
HELD_SPECS = """\
- name: held_hang
  upstream: echo
  route: {method: POST, path: /held/hang}
  forward: {path: /v1/slow/hang, headers: [X-Gate]}
  scopes: [echo:write]
  tier: yellow
  idempotency: required
  timeout_ms: 300
  input_schema: {type: object}
- name: held_down
  upstream: down
  route: {method: POST, path: /held/down}
  forward: {path: /v1/items}
  scopes: [echo:write]
  tier: yellow
  idempotency: required
  input_schema: {type: object}
- name: held_quick
  upstream: echo
  route: {method: POST, path: /held/quick}
  forward: {path: /v1/items}
  scopes: [echo:write]
  tier: yellow
  idempotency: required
  input_schema: {type: object}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
       upstream: Upstream) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("approve-exit")
    (directory / "specs").mkdir()
    (directory / "specs" / "held.yaml").write_text(HELD_SPECS, encoding="utf-8")
    gateway = Gateway(directory, dev_key, upstream.url,
                      tool_specs=[SHIPPED_SPECS, E2E / "specs", E2E / "specs_approvals",
                                  directory / "specs"],
                      policies=[SHIPPED_POLICIES, E2E / "policies_approvals"],
                      extra={"approvals": {"sweep_interval_ms": 100, "wait_ms": 1000}})
    with running(gateway):
        yield gateway


@pytest.fixture(scope="module")
def agent(dev_key: DevKey) -> str:
    return dev_key.token("svc-agent", agent="support-bot", tenant="acme",
                         scopes=["echo:write", "billing:refund"])


def approver(key: DevKey, sub: str, *roles: str) -> str:
    return key.token(sub, tenant="acme", roles=list(roles), scopes=["toolgate:approve"])


def hold(gw: Gateway, token: str, path: str, key: str, **headers: str) -> Reply:
    reply = gw.call("POST", path, token=token, body={"tenant_id": "acme", "amount": 5},
                    headers={"Idempotency-Key": key, **headers})
    assert reply.status == 202, reply.raw
    return reply


def toolgate(gw: Gateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the token in $TOOLGATE_APPROVER_TOKEN, the admin API after the command,
    as the README's synopsis writes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env["TOOLGATE_APPROVER_TOKEN"] = token
    return subprocess.run([*toolgate_command(), *args, "--admin-url",
                           f"http://127.0.0.1:{gw.admin_port}"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def retry(gw: Gateway, token: str, path: str, key: str) -> Reply:
    return gw.call("POST", path, token=token, body={"tenant_id": "acme", "amount": 5},
                   headers={"Idempotency-Key": key})


def approved_calls(gw: Gateway, tool: str, status: str, code: str) -> str:
    text = request(gw.admin_port, "GET", "/metrics").raw.decode()
    return next((line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(
        f'toolgate_approved_calls_total{{code="{code}",status="{status}",tool="{tool}"}}')),
        "0")


def test_0_the_call_ran(gw: Gateway, agent: str, dev_key: DevKey) -> None:
    approval_id = hold(gw, agent, "/echo/slow-refunds", "exit-0",
                       **{"X-Delay": "0"}).json["approval_id"]
    result = toolgate(gw, approver(dev_key, "alice", "billing-approver"), "approvals",
                      "approve", approval_id, "--comment", "ok")
    assert result.returncode == 0, result.stderr
    assert "status       executed" in result.stdout
    assert approved_calls(gw, "slow_refund", "executed", "") == "1.0"


def test_3_recorded_and_waiting_for_another_approver(gw: Gateway, agent: str,
                                                     dev_key: DevKey) -> None:
    approval_id = hold(gw, agent, "/echo/two-person", "exit-3").json["approval_id"]
    first = toolgate(gw, approver(dev_key, "alice", "finance"), "approvals", "approve",
                     approval_id, "--json")
    assert first.returncode == 3, first.stderr
    assert json.loads(first.stdout)["status"] == "pending"
    assert "waits for more approvals (1 of 2)" in first.stderr
    second = toolgate(gw, approver(dev_key, "bob", "finance"), "approvals", "approve",
                      approval_id)
    assert second.returncode == 0, second.stderr


def test_4_not_sent_a_kill_switch(gw: Gateway, agent: str, dev_key: DevKey,
                                  upstream: Upstream) -> None:
    ops = approver(dev_key, "ops-oncall")
    approval_id = hold(gw, agent, "/held/quick", "exit-4k").json["approval_id"]
    killed = toolgate(gw, ops, "kill", "--scope", "tool:held_quick", "--reason", "incident")
    assert killed.returncode == 0, killed.stderr
    try:
        result = toolgate(gw, ops, "approvals", "approve", approval_id)
    finally:
        assert toolgate(gw, ops, "revive", "--scope", "tool:held_quick").returncode == 0
    assert result.returncode == 4, result.stderr
    assert "status       not_sent" in result.stdout
    assert "error code   killed" in result.stdout
    assert "the call was not sent (not_sent, killed): it did not run" in result.stderr
    assert not [s for s in upstream.seen if s.headers.get("Idempotency-Key") == "exit-4k"]
    # The agent: its poll and its retry say the call was not sent, and why.
    polled = gw.call("GET", f"/v1/approvals/{approval_id}", token=agent).json
    assert (polled["status"], polled["error_code"]) == ("not_sent", "killed")
    again = retry(gw, agent, "/held/quick", "exit-4k")
    assert (again.status, again.code) == (403, "killed")
    assert (again.json["error"]["sent"], again.json["error"]["approval_status"]) == (
        False, "not_sent")
    assert approved_calls(gw, "held_quick", "not_sent", "killed") == "1.0"
    listed = toolgate(gw, ops, "approvals", "list", "--status", "not_sent", "--json")
    assert approval_id in {a["id"] for a in json.loads(listed.stdout)["approvals"]}


def test_4_not_sent_the_upstream_could_not_be_connected_to(gw: Gateway, agent: str,
                                                           dev_key: DevKey) -> None:
    approval_id = hold(gw, agent, "/held/down", "exit-4d").json["approval_id"]
    result = toolgate(gw, approver(dev_key, "alice"), "approvals", "approve", approval_id)
    assert result.returncode == 4, result.stderr
    again = retry(gw, agent, "/held/down", "exit-4d")
    assert (again.status, again.code, again.json["error"]["sent"]) == (502, "upstream_error",
                                                                       False)
    [outcome] = [r for r in gw.records() if r["kind"] == "outcome"
                 and r.get("approval_id") == approval_id]
    assert (outcome["status"], outcome["sent"]) == ("not_sent", False)


def test_5_sent_and_no_answer(gw: Gateway, agent: str, dev_key: DevKey,
                              upstream: Upstream) -> None:
    gate = upstream.gate("exit-5")   # never opened while the gateway waits: it times out
    approval_id = hold(gw, agent, "/held/hang", "exit-5",
                       **{"X-Gate": "exit-5"}).json["approval_id"]
    try:
        result = toolgate(gw, approver(dev_key, "alice"), "approvals", "approve",
                          approval_id)
    finally:
        gate.open()
    assert result.returncode == 5, result.stderr
    assert "status       failed" in result.stdout
    assert "error code   upstream_timeout" in result.stdout
    assert "it may have run upstream" in result.stderr
    again = retry(gw, agent, "/held/hang", "exit-5")
    assert (again.status, again.code, again.json["error"]["approval_status"]) == (
        502, "upstream_error", "failed")
    [outcome] = [r for r in gw.records() if r["kind"] == "outcome"
                 and r.get("approval_id") == approval_id]
    assert (outcome["status"], outcome["sent"]) == ("failed", True)


def test_6_still_being_sent_when_the_wait_runs_out(gw: Gateway, agent: str,
                                                   dev_key: DevKey, upstream: Upstream) -> None:
    gate = upstream.gate("exit-6")
    approval_id = hold(gw, agent, "/echo/slow-refunds", "exit-6",
                       **{"X-Gate": "exit-6"}).json["approval_id"]
    alice = approver(dev_key, "alice", "billing-approver")
    try:
        result = toolgate(gw, alice, "approvals", "approve", approval_id, "--wait", "0")
        assert result.returncode == 6, result.stderr
        assert "status       executing" in result.stdout
    finally:
        gate.open()
    wait_for(lambda: toolgate(gw, alice, "approvals", "show", approval_id, "--json")
             .stdout.count('"status": "executed"'), what="the call to finish")


def test_1_refused_and_reject(gw: Gateway, agent: str, dev_key: DevKey) -> None:
    approval_id = hold(gw, agent, "/held/quick", "exit-1").json["approval_id"]
    alice = approver(dev_key, "alice")
    rejected = toolgate(gw, alice, "approvals", "reject", approval_id, "--reason", "dup",
                        "--json")
    assert rejected.returncode == 0, rejected.stderr
    assert json.loads(rejected.stdout)["status"] == "rejected"
    refused = toolgate(gw, alice, "approvals", "approve", approval_id, "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "approval_not_pending"
    myself = dev_key.token("svc-agent", tenant="acme", scopes=["toolgate:approve"])
    other = hold(gw, agent, "/held/quick", "exit-1b").json["approval_id"]
    assert toolgate(gw, myself, "approvals", "approve", other).returncode == 1


def test_2_no_answer_from_the_admin_api(dev_key: DevKey) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env["TOOLGATE_APPROVER_TOKEN"] = approver(dev_key, "alice")
    result = subprocess.run([*toolgate_command(), "approvals", "approve", "apr_x",
                             "--admin-url", "http://127.0.0.1:1"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "cannot reach the admin API" in result.stderr
