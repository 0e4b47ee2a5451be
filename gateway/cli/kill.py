"""`toolgate kill`, `toolgate kill --list` and `toolgate revive`: the kill switches from a
terminal, as a client of the admin API (`gateway.cli.client`).

The gateway refuses a switch for a tool it has not loaded or a tenant it does not know
(422 `unknown_scope`, naming the loaded tools), since a typo would stop nothing; `--force`
sets it all the same. A switch for an agent it has no trace of is set, with a warning.
Exit status: 0 done, 1 refused (nothing changed), 2 usage error or no usable answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from gateway.cli.approvals import Exit, ago
from gateway.cli.client import ApiError, client, refused, unreachable
from gateway.cli.options import UsageError, client_options

SCOPES = "global, tenant:<tenant>, agent:<agent> or tool:<tool name>"
USAGE = ("usage: toolgate kill --scope SCOPE --reason TEXT [--force] [--admin-url URL] "
         "[--json]\n       toolgate kill --list [--admin-url URL] [--json]\n")


def add_parsers(sub: Any) -> None:
    kill = sub.add_parser(
        "kill", help="stop calls by scope, on every replica within a second; --list shows "
                     "the switches in force",
        description="Stop calls by scope, or (--list) show the switches in force. A tool "
                    "must be loaded and a tenant known to the gateway, unless --force.",
        epilog="exit status: 0 done, 1 refused (e.g. unknown_scope; nothing changed), "
               "2 usage error or no usable answer from the admin API")
    kill.add_argument("--scope", help=SCOPES)
    kill.add_argument("--reason", help="why (required to set a switch; shown to the agents "
                                       "it stops)")
    kill.add_argument("--force", action="store_true",
                      help="set it even for a tool that is not loaded or a tenant the gateway "
                           "does not know")
    kill.add_argument("--list", action="store_true",
                      help="list the switches in force: scope, reason, who set it, since when")
    client_options(kill)
    revive = sub.add_parser("revive", help="clear a kill switch")
    revive.add_argument("--scope", required=True, help=SCOPES)
    client_options(revive)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Raises `UsageError` for options that do not go together."""
    if args.command == "kill":
        problem = _usage(args)
        if problem is not None:
            raise UsageError(USAGE, "toolgate kill", problem)
    api = client(args, environ)
    if api is None:
        return Exit.ERROR
    try:
        if args.command == "revive":
            body = api.call("DELETE", f"/v1/killswitch/{urllib.parse.quote(args.scope, safe='')}")
            text = (f"revived {shown(body['scope'])} (set by {_who(body)} "
                    f"{ago(body['since'])})")
        elif args.list:
            body = api.call("GET", "/v1/killswitch")
            text = table(body["killswitches"])
        else:
            payload: dict[str, Any] = {"scope": args.scope, "reason": args.reason}
            if args.force:
                payload["force"] = True
            body = api.call("POST", "/v1/killswitch", payload)
            text = (f"killed {shown(body['scope'])}: {shown(body['reason'])} "
                    f"(since {shown(body['since'])})")
    except ApiError as exc:
        refused(exc, args.json)
        if exc.code == "unknown_scope" and _forceable(exc):
            print("hint: check the name (`toolgate kill --list` shows the switches in "
                  "force); --force sets it anyway", file=sys.stderr)
        return Exit.REFUSED if exc.refused else Exit.ERROR
    except OSError as exc:
        unreachable(api, exc)
        return Exit.ERROR
    print(json.dumps(body, indent=2) if args.json else text)
    if body.get("warning"):
        print(f"warning: {shown(body['warning'])}", file=sys.stderr)
    return Exit.OK


def _usage(args: argparse.Namespace) -> str | None:
    if args.list:
        given = [o for o, v in (("--scope", args.scope), ("--reason", args.reason),
                                ("--force", args.force)) if v]
        return f"--list does not go with {', '.join(given)}" if given else None
    missing = [o for o, v in (("--scope", args.scope), ("--reason", args.reason)) if not v]
    return f"{' and '.join(missing)} required (or --list)" if missing else None


def shown(value: Any) -> str:
    """Text from the API as a terminal line: anything not printable escaped.

    SECURITY: a scope, a reason or a token's `sub` may hold terminal escapes or line breaks
    (a switch set by an earlier version, which took any name without whitespace); printed
    escaped, it cannot move the cursor, rewrite the screen or pass for another line."""
    text = str(value)
    return text if text.isprintable() else json.dumps(text)[1:-1]


def _forceable(exc: ApiError) -> bool:
    """Whether --force would set it: not for a name no token can carry."""
    error = exc.body.get("error") if isinstance(exc.body, dict) else None
    return not (isinstance(error, dict) and error.get("forceable") is False)


def _who(switch: Mapping[str, Any]) -> str:
    actor = switch.get("actor") or {}
    return shown(actor.get("sub") or "-")


def table(switches: list[dict[str, Any]]) -> str:
    """The switches in force, one a line: scope, since when, who set it, why."""
    if not switches:
        return "no kill switches are set"
    rows = [("SCOPE", "SINCE", "AGE", "SET BY", "REASON")]
    rows += [(shown(k["scope"]), shown(k["since"]), ago(k["since"]), _who(k),
              # SECURITY: escaped, so a reason cannot move the cursor or fake a line.
              json.dumps(k["reason"])[1:-1]) for k in switches]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
                     + "  " + r[-1] for r in rows)
