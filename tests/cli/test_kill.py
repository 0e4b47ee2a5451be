"""`toolgate kill`, `kill --list` and `revive` as a user runs them, against a real
`toolgate serve`: a typo in a tool's name fails naming the loaded tools, `--force` sets it
all the same, the switches in force are listed, and options go before or after."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream, running, toolgate_command
from tests.e2e.profiles import default_gateway


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey) -> Iterator[Gateway]:
    upstream = Upstream()
    upstream.start()
    try:
        with running(default_gateway(tmp_path_factory.mktemp("kill"), dev_key,
                                     upstream)) as gateway:
            yield gateway
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def ops(dev_key: DevKey) -> str:
    return dev_key.token("ops-oncall", tenant="acme", roles=["sre"],
                         scopes=["toolgate:approve"])


def toolgate(gw: Gateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with the token in $TOOLGATE_APPROVER_TOKEN (as the README advises) and the
    admin API in $TOOLGATE_ADMIN_URL, unless `args` name them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env.update({"TOOLGATE_APPROVER_TOKEN": token,
                "TOOLGATE_ADMIN_URL": f"http://127.0.0.1:{gw.admin_port}"})
    return subprocess.run([*toolgate_command(), *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_typo_fails_naming_the_loaded_tools(gw: Gateway, ops: str) -> None:
    result = toolgate(gw, ops, "kill", "--scope", "tool:echo_itme", "--reason", "incident 7")
    assert result.returncode == 1, result.stderr
    assert "unknown_scope" in result.stderr
    assert "no tool 'echo_itme' is loaded" in result.stderr
    assert "echo_item" in result.stderr and "create_refund_request" in result.stderr
    assert "--force" in result.stderr
    listed = toolgate(gw, ops, "kill", "--list")
    assert (listed.returncode, listed.stdout.strip()) == (0, "no kill switches are set")


def test_force_then_list_then_revive(gw: Gateway, ops: str) -> None:
    admin = f"http://127.0.0.1:{gw.admin_port}"
    forced = toolgate(gw, ops, "kill", "--scope", "tool:next_weeks_tool", "--reason",
                      "not yet, incident 8", "--force", "--admin-url", admin)
    assert forced.returncode == 0, forced.stderr
    assert "killed tool:next_weeks_tool: not yet, incident 8" in forced.stdout
    try:
        text = toolgate(gw, ops, "kill", "--list")
        assert text.returncode == 0, text.stderr
        header, row = text.stdout.splitlines()
        assert header.split() == ["SCOPE", "SINCE", "AGE", "SET", "BY", "REASON"]
        assert row.split()[0] == "tool:next_weeks_tool"
        assert "ops-oncall" in row and row.endswith("not yet, incident 8")
        for argv in (("kill", "--list", "--json"), ("kill", "--json", "--list"),
                     ("--json", "kill", "--list"), ("--admin-url", admin, "--json", "kill",
                                                    "--list")):
            listed = toolgate(gw, ops, *argv)
            assert listed.returncode == 0, (argv, listed.stderr)
            [switch] = json.loads(listed.stdout)["killswitches"]
            assert (switch["scope"], switch["reason"], switch["actor"]["sub"]) == (
                "tool:next_weeks_tool", "not yet, incident 8", "ops-oncall")
            assert switch["since"].endswith("Z")
    finally:
        revived = toolgate(gw, ops, "revive", "--scope", "tool:next_weeks_tool")
    assert revived.returncode == 0, revived.stderr
    assert "revived tool:next_weeks_tool (set by ops-oncall" in revived.stdout
    again = toolgate(gw, ops, "revive", "--scope", "tool:next_weeks_tool")
    assert (again.returncode, "not_found" in again.stderr) == (1, True)


def test_a_loaded_tool_stops_its_calls_with_options_anywhere(gw: Gateway, ops: str,
                                                             dev_key: DevKey) -> None:
    admin = f"http://127.0.0.1:{gw.admin_port}"
    killed = toolgate(gw, "", "--admin-url", admin, "kill", "--reason", "incident 9",
                      "--token", ops, "--scope", "tool:echo_item", "--json")
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout)["scope"] == "tool:echo_item"
    try:
        agent = dev_key.token("svc", tenant="acme", scopes=["echo:read"])
        assert gw.call("GET", "/echo/items/a", token=agent).code == "killed"
    finally:
        assert toolgate(gw, ops, "revive", "--token", ops, "--scope",
                        "tool:echo_item").returncode == 0


def test_an_agent_never_seen_is_set_with_a_warning(gw: Gateway, ops: str) -> None:
    result = toolgate(gw, ops, "kill", "--scope", "agent:suport-bot", "--reason", "drill")
    try:
        assert result.returncode == 0, result.stderr
        assert "warning: no held call in the state store was made by agent 'suport-bot'" \
            in result.stderr
    finally:
        assert toolgate(gw, ops, "revive", "--scope", "agent:suport-bot").returncode == 0


@pytest.mark.parametrize(("argv", "message"), [
    (("kill", "--scope", "global"), "--reason required (or --list)"),
    (("kill", "--list", "--scope", "global"), "--list does not go with --scope"),
    (("kill", "--reason", "x"), "--scope required (or --list)"),
    (("revive",), "the following arguments are required: --scope")])
def test_usage_errors(gw: Gateway, ops: str, argv: tuple[str, ...], message: str) -> None:
    result = toolgate(gw, ops, *argv)
    assert (result.returncode, message in result.stderr) == (2, True), result.stderr


def test_without_a_token(gw: Gateway) -> None:
    result = toolgate(gw, "", "kill", "--list")
    assert result.returncode == 2
    assert "TOOLGATE_APPROVER_TOKEN" in result.stderr


def test_a_scope_that_is_not_printable_is_refused_even_forced(gw: Gateway, ops: str) -> None:
    result = toolgate(gw, ops, "kill", "--scope", "tenant:acme\x1b[2J", "--reason", "x",
                      "--force")
    assert result.returncode == 1, result.stderr
    assert "unknown_scope: no token can carry the tenant 'acme\\x1b[2J': names are printable" \
        in result.stderr
    assert "--force sets it anyway" not in result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    listed = toolgate(gw, ops, "kill", "--list")
    assert listed.stdout.strip() == "no kill switches are set"


def test_a_switch_an_earlier_version_set_is_listed_escaped_and_revived(gw: Gateway,
                                                                        ops: str) -> None:
    """Earlier versions took any scope without whitespace, terminal escapes included: the
    list shows such a switch escaped, and `revive` still clears it."""
    scope = "tenant:evil\x1b[2J\x1b]0;owned\x07"
    with sqlite3.connect(gw.directory / "state" / "toolgate.db", timeout=30) as conn:
        conn.execute("INSERT INTO kill_switches (scope, reason, actor, created_at) "
                     "VALUES (?, ?, ?, ?)", (scope, "drill", json.dumps({"sub": "old\x1b[1A"}),
                                             time.time()))
    try:
        listed = toolgate(gw, ops, "kill", "--list")
        assert listed.returncode == 0, listed.stderr
        assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
        [row] = listed.stdout.splitlines()[1:]
        assert row.startswith("tenant:evil\\u001b[2J\\u001b]0;owned\\u0007 ")
        assert "old\\u001b[1A" in row
        as_json = toolgate(gw, ops, "kill", "--list", "--json")
        assert "\x1b" not in as_json.stdout
        assert json.loads(as_json.stdout)["killswitches"][0]["scope"] == scope
    finally:
        revived = toolgate(gw, ops, "revive", "--scope", scope)
    assert revived.returncode == 0, revived.stderr
    assert revived.stdout.startswith("revived tenant:evil\\u001b[2J\\u001b]0;owned\\u0007 "
                                     "(set by old\\u001b[1A ")
    assert toolgate(gw, ops, "kill", "--list").stdout.strip() == "no kill switches are set"
