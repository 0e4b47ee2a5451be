"""How `toolgate` reads its command line: options that may come before or after the
command, and usage errors that never repeat a secret.

Options a command shares with others are accepted on either side of it, as a user types
them and as the README writes them: `toolgate approvals --json list` and `toolgate approvals
list --json`; `toolgate --admin-url U kill --list`; `toolgate --config F serve`. Within
`approvals`, `kill` and `revive`, every level declares the client options with a suppressed
default, so a level that does not see one never overwrites what another level read. Before
the command (`toolgate --token T approvals …`), they are read into `global_*` and merged by
`merge_globals`: the command's own value wins, and a command that takes no such option is a
usage error.

SECURITY: argparse's own errors quote the command line — "unrecognized arguments: --token
eyJ…" prints a whole JWT to a terminal, a CI log or a screen share. `Parser.error` raises
`UsageError` instead of printing, and `main` prints it through `redact`: the value of every
`--token` (and of every abbreviation argparse would take for it) and anything shaped like a
JWT become `[REDACTED]`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

REDACTED = "[REDACTED]"
TOKEN = "--token"  # noqa: S105 (the option's name, not a token)
# A JWS or JWE in compact form: base64url segments joined by dots. Segments of at least ten
# characters, so a version or an address (1.2.3, 127.0.0.1) is left alone.
JWT = re.compile(r"[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*){1,3}")
CLIENT_COMMANDS = frozenset({"approvals", "kill", "revive"})
CONFIG_COMMANDS = frozenset({"serve", "check", "replay", "audit"})
JSON_COMMANDS = CLIENT_COMMANDS | {"replay", "audit"}
DEFAULT_CONFIG = Path("toolgate.yaml")


class UsageError(Exception):
    """A command line argparse refused: `usage` of the parser that refused it and the
    `message` (both unredacted: `main` prints them through `redact`)."""

    def __init__(self, usage: str, prog: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage
        self.prog = prog
        self.message = message


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` that raises its errors (`UsageError`) instead of printing them.
    Its sub-parsers are of the same class (argparse makes them `type(self)`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.format_usage(), self.prog, message)


def _is_token_option(arg: str) -> bool:
    """`--token`, or a prefix of it argparse would take as `--token` (or find ambiguous)."""
    name = arg.split("=", 1)[0]
    return len(name) >= 3 and TOKEN.startswith(name)


def secrets_in(argv: Sequence[str]) -> list[str]:
    """The values given to `--token` on this command line, in any spelling."""
    found = []
    for i, arg in enumerate(argv):
        if not _is_token_option(arg):
            continue
        if "=" in arg:
            found.append(arg.split("=", 1)[1])
        elif i + 1 < len(argv):
            found.append(argv[i + 1])
    return [s for s in found if s]


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every given secret (whole words only) and every JWT replaced."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = re.sub(rf"(?<![^\s'\"=,(\[]){re.escape(secret)}(?![^\s'\",)\]])", REDACTED,
                      text)
    return JWT.sub(REDACTED, text)


def client_options(parser: argparse.ArgumentParser) -> None:
    """`--admin-url`, `--token` and `--json` on one level of `approvals`, `kill` or `revive`
    (default suppressed: absent unless given at this level or another)."""
    parser.add_argument("--admin-url", default=argparse.SUPPRESS, metavar="URL",
                        help="admin API (default $TOOLGATE_ADMIN_URL or "
                             "http://127.0.0.1:8081)")
    parser.add_argument("--token", default=argparse.SUPPRESS, metavar="JWT",
                        help="JWT with the approver scope; prefer $TOOLGATE_APPROVER_TOKEN "
                             "(a command line is visible to other users in `ps`)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the admin API's JSON")


def global_options(parser: argparse.ArgumentParser) -> None:
    """The options also accepted before the command, on the root parser."""
    parser.add_argument("--config", "-c", type=Path, dest="global_config", metavar="FILE",
                        help="gateway config, for serve, check, replay and audit "
                             f"(default {DEFAULT_CONFIG})")
    parser.add_argument("--admin-url", dest="global_admin_url", metavar="URL",
                        help="admin API, for approvals, kill and revive")
    parser.add_argument("--token", dest="global_token", metavar="JWT",
                        help="approver JWT, for approvals, kill and revive; prefer "
                             "$TOOLGATE_APPROVER_TOKEN")
    parser.add_argument("--json", action="store_true", dest="global_json",
                        help="JSON output, for approvals, kill, revive, replay and audit")


def config_option(parser: argparse.ArgumentParser) -> None:
    """`--config` of serve and check (default suppressed; `merge_globals` fills it in)."""
    parser.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS,
                        metavar="FILE", help=f"gateway config (default {DEFAULT_CONFIG})")


def merge_globals(root: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Apply the options given before the command to it; raise `UsageError` (through
    `root.error`) for one the command does not take."""
    command = args.command
    given = {"--config": (args.global_config, CONFIG_COMMANDS, "config"),
             "--admin-url": (args.global_admin_url, CLIENT_COMMANDS, "admin_url"),
             "--token": (args.global_token, CLIENT_COMMANDS, "token"),
             "--json": (args.global_json or None, JSON_COMMANDS, "json")}
    for option, (value, commands, dest) in given.items():
        if value is None:
            continue
        if command not in commands:
            root.error(f"{option} does not apply to `toolgate {command}`")
        if getattr(args, dest, None) in (None, False):   # the command's own value wins
            setattr(args, dest, value)
    if command == "audit" and getattr(args, "json", False) and getattr(args, "csv", False):
        root.error("--json and --csv do not go together")
    if command in ("serve", "check") and getattr(args, "config", None) is None:
        args.config = DEFAULT_CONFIG
    for dest in ("admin_url", "token", "json"):
        if command in CLIENT_COMMANDS and not hasattr(args, dest):
            setattr(args, dest, False if dest == "json" else None)
