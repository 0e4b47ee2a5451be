"""The command line: options accepted before or after the command, and usage errors that
never print a token (a JWT in "unrecognized arguments: …" would land in a terminal, a CI
log or a screen share)."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main as cli
from gateway.cli.options import REDACTED, merge_globals, redact, secrets_in
from gateway.devtokens import DevKey
from tests.e2e.harness import toolgate_command

U = "http://127.0.0.1:9"


def parsed(*argv: str) -> argparse.Namespace:
    parser = cli._parser()
    args = parser.parse_args(list(argv))
    merge_globals(parser, args)
    return args


@pytest.mark.parametrize("argv", [
    ("approvals", "--json", "list"), ("approvals", "list", "--json"),
    ("--json", "approvals", "list"), ("--json", "approvals", "list", "--json")])
def test_json_before_or_after_the_subcommand(argv: tuple[str, ...]) -> None:
    args = parsed(*argv)
    assert (args.approvals_command, args.json) == ("list", True)


def test_without_json_it_is_text() -> None:
    assert parsed("approvals", "list").json is False


@pytest.mark.parametrize("argv", [
    ("approvals", "approve", "apr_1", "--token", "T", "--admin-url", U),
    ("approvals", "--token", "T", "--admin-url", U, "approve", "apr_1"),
    ("approvals", "--token", "T", "approve", "apr_1", "--admin-url", U),
    ("--token", "T", "--admin-url", U, "approvals", "approve", "apr_1"),
    ("--admin-url", U, "approvals", "approve", "apr_1", "--token", "T")])
def test_token_and_admin_url_anywhere(argv: tuple[str, ...]) -> None:
    args = parsed(*argv)
    assert (args.approvals_command, args.id, args.token, args.admin_url) == (
        "approve", "apr_1", "T", U)


def test_the_readme_synopsis_parses() -> None:
    args = parsed("approvals", "list", "--status", "all", "--tool", "t", "--tenant", "acme",
                  "--json")
    assert (args.status, args.tool, args.tenant, args.json) == ("all", "t", "acme", True)
    assert parsed("approvals", "show", "apr_1", "--json").json is True
    assert parsed("approvals", "approve", "apr_1", "--comment", "ok").comment == "ok"
    assert parsed("approvals", "reject", "apr_1", "--reason", "dup").reason == "dup"


@pytest.mark.parametrize("argv", [
    ("kill", "--scope", "global", "--reason", "r", "--admin-url", U, "--json"),
    ("--admin-url", U, "--json", "kill", "--scope", "global", "--reason", "r"),
    ("kill", "--json", "--scope", "global", "--admin-url", U, "--reason", "r")])
def test_kill_options_anywhere(argv: tuple[str, ...]) -> None:
    args = parsed(*argv)
    assert (args.command, args.scope, args.admin_url, args.json) == ("kill", "global", U, True)


def test_kill_list_and_revive() -> None:
    assert parsed("kill", "--list", "--json").list is True
    assert parsed("--json", "kill", "--list").json is True
    assert parsed("revive", "--scope", "tool:x", "--token", "T").token == "T"


@pytest.mark.parametrize("argv", [("--config", "x.yaml", "serve"), ("serve", "-c", "x.yaml"),
                                  ("-c", "x.yaml", "check"), ("check", "--config", "x.yaml")])
def test_config_before_or_after_serve_and_check(argv: tuple[str, ...]) -> None:
    assert parsed(*argv).config == Path("x.yaml")


def test_config_defaults_and_reaches_replay() -> None:
    assert parsed("serve").config == Path("toolgate.yaml")
    assert parsed("check").config == Path("toolgate.yaml")
    args = parsed("--config", "x.yaml", "replay", "--policies", "p")
    assert args.config == Path("x.yaml")
    assert parsed("replay", "--policies", "p", "--config", "y.yaml").config == Path("y.yaml")
    # The command's own value wins over one given before it.
    assert parsed("-c", "x.yaml", "serve", "-c", "y.yaml").config == Path("y.yaml")


@pytest.mark.parametrize("argv", [("--token", "T", "serve"), ("--admin-url", U, "check"),
                                  ("--config", "x.yaml", "approvals", "list"),
                                  ("--json", "keys", "init", "d")])
def test_an_option_before_a_command_that_does_not_take_it_is_refused(
        argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(list(argv), {}) == 2
    assert "does not apply to `toolgate" in capsys.readouterr().err


# -- no token in a usage error -----------------------------------------------------------------

@pytest.fixture(scope="module")
def jwt(dev_key: DevKey) -> str:
    return dev_key.token("alice", tenant="acme", scopes=["toolgate:approve"])


def mistakes(token: str) -> list[list[str]]:
    """Command lines argparse refuses, each with the token somewhere in it."""
    return [
        ["approvals", "list", "--token", token, "--bogus"],       # an unknown option
        ["approvals", "list", "--token", token, "extra"],         # a stray word
        ["serve", "--token", token],                              # --token where it's unknown
        ["serve", f"--token={token}"],
        ["approvals", "list", "--tok", token, "--limit", "x"],    # an abbreviation
        ["approvals", "list", f"--to={token}", "--nope"],
        ["approvals", "list", "--limit", token],                  # the token as a bad value
        ["approvals", "lst", "--token", token],                   # a bad subcommand
        ["approvals", "approve", token],                          # the token as the ID…
        ["kill", "--scope", token, "--list"],                     # …or the scope
        ["--token", token, "demo"],
        [token],                                                  # as the command
        ["approvals", "list", "--status", "pending", token],
    ]


def test_no_usage_error_prints_the_token(jwt: str, capsys: pytest.CaptureFixture[str]) -> None:
    header, payload, signature = jwt.split(".")
    for argv in mistakes(jwt):
        code = cli.main(argv, {})
        out, err = capsys.readouterr()
        assert code == 2, argv
        assert "error:" in err, argv
        for part in (header, payload, signature):
            assert part not in out + err, (argv, err)


def test_an_opaque_token_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Not every token is a JWT: whatever follows --token is the secret."""
    assert cli.main(["approvals", "list", "--token", "s3cr3t-opaque", "--bogus"], {}) == 2
    assert cli.main(["serve", "--token=s3cr3t-opaque"], {}) == 2
    err = capsys.readouterr().err
    assert "s3cr3t-opaque" not in err
    assert REDACTED in err


def test_redact_leaves_the_rest_of_the_message() -> None:
    assert redact("unrecognized arguments: --token abc --bogus", ["abc"]) == \
        f"unrecognized arguments: --token {REDACTED} --bogus"
    assert redact("argument --limit: invalid int value: 'abc'", ["abc"]) == \
        f"argument --limit: invalid int value: '{REDACTED}'"
    assert redact("invalid choice: 'abcd'", ["abc"]) == "invalid choice: 'abcd'"
    assert redact("--admin-url http://127.0.0.1:8081 v1.2.3", []) == \
        "--admin-url http://127.0.0.1:8081 v1.2.3"
    assert secrets_in(["--token", "a", "--tok=b", "--to", "c", "--tool", "d", "--t=e"]) == [
        "a", "b", "c", "e"]


def test_the_console_script_never_prints_the_token(jwt: str) -> None:
    """As a user runs it: the installed `toolgate`, a JWT given to a command without
    --token, next to a misspelt option."""
    result = subprocess.run(
        [*toolgate_command(), "serve", "--token", jwt, "--no-such-option"],
        env={k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
    assert jwt.split(".")[1] not in result.stdout + result.stderr
    assert REDACTED in result.stderr
