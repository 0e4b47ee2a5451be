"""`toolgate approvals list|show|approve|reject`: the approval queue from a terminal, as a
client of the admin API (`gateway.cli.client`).

`approve` says by its exit status whether the approved call ran (`EXIT_TEXT`): an approver
scripting it can tell a vote that still waits for other approvers from a call that was sent
and answered, from one the gateway did not send, from one sent without an answer. The API
answers a vote after the call ran or `approvals.wait_ms` passed; if the call is still
being sent then, the CLI asks again until it ends or `--wait` seconds pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any

from gateway.cli.client import ApiError, Client, client, refused, unreachable
from gateway.cli.options import client_options

POLL_S = 0.5
DEFAULT_WAIT_S = 60.0


class Exit(IntEnum):
    """The exit statuses of `toolgate approvals` (and `kill`/`revive`: 0, 1, 2)."""

    OK = 0           # done; for approve: the call was sent and the upstream answered
    REFUSED = 1      # the API refused (4xx): nothing changed, the vote was not recorded
    ERROR = 2        # usage error, no token, the API unreachable or failing (5xx)
    WAITING = 3      # the vote was recorded; more approvals are needed; nothing was sent
    NOT_SENT = 4     # approved, and the gateway did not send the call: it did not run
    NO_ANSWER = 5    # approved and sent, and no answer came (failed, outcome_unknown)
    RUNNING = 6      # approved, still being sent when --wait ran out: not known yet


EXIT_TEXT = """exit status of approve (and reject):
  0  approve: the approvals are complete, the call was sent and the upstream answered
     (any HTTP status: see `result`); reject: the call is rejected
  1  refused: the vote was not recorded (self_approval, approver_role_required,
     approval_not_pending, approval_expired, already_approved_by_you, not_found, a token
     refused, over_capacity: the gateway is stopping); nothing changed
  2  usage error, no token, or no usable answer from the admin API (unreachable, 5xx):
     whether the vote counted is not known; look with `toolgate approvals show ID`
  3  the vote was recorded and the call waits for more approvals (N of M); nothing was
     sent
  4  not_sent: the approvals are complete, but the gateway did not send the call (kill
     switch, run budget, integrity check, tool or upstream removed, upstream could not be
     connected to); it did not run
  5  failed or outcome_unknown: the call was sent and no answer came back (timeout,
     connection broken, gateway stopped mid-send); it may have run upstream: check before
     doing it again
  6  still approved or executing when --wait ran out; look again with `show`
"""
# What the state of a call after an approver's vote says about it.
_BY_STATUS = {"executed": Exit.OK, "pending": Exit.WAITING, "not_sent": Exit.NOT_SENT,
              "rejected": Exit.NOT_SENT, "expired": Exit.NOT_SENT, "failed": Exit.NO_ANSWER,
              "outcome_unknown": Exit.NO_ANSWER, "approved": Exit.RUNNING,
              "executing": Exit.RUNNING}
_NOTES = {
    Exit.WAITING: "the vote is recorded; the call waits for more approvals ({votes} of "
                  "{required}) and was not sent",
    Exit.NOT_SENT: "the call was not sent ({status}{error}): it did not run",
    Exit.NO_ANSWER: "the call was sent and no answer came back ({status}{error}): it may "
                    "have run upstream; check before doing it again",
    Exit.RUNNING: "the call is still {status}; look again with `toolgate approvals show "
                  "{id}`",
}
STATUSES = ("pending, approved, executing, executed, failed, not_sent, outcome_unknown, "
            "rejected, expired")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list, show, approve and reject held calls",
                       description=__doc__.split("\n\n")[0] if __doc__ else None,
                       epilog="exit status: 0 done, 1 refused by the admin API, 2 usage error "
                              "or no usable answer; approve also 3 to 6, which say whether "
                              "the approved call ran: see `toolgate approvals approve --help`")
    client_options(p)
    asub = p.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND")
    ls = asub.add_parser("list", help="held calls, newest first")
    ls.add_argument("--status", default="pending",
                    help=f"{STATUSES}, or 'all' (default pending)")
    ls.add_argument("--tool")
    ls.add_argument("--tenant")
    ls.add_argument("--limit", type=int, default=50)
    show = asub.add_parser("show", help="one held call in full")
    show.add_argument("id")
    approve = asub.add_parser("approve", help="approve a held call; the exit status says "
                                              "whether it ran",
                              epilog=EXIT_TEXT,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    approve.add_argument("id")
    approve.add_argument("--comment")
    approve.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                         help="how long to wait for the approved call to end (default "
                              f"{DEFAULT_WAIT_S:g})")
    reject = asub.add_parser("reject", help="reject a held call with a reason",
                             epilog=EXIT_TEXT,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    reject.add_argument("id")
    reject.add_argument("--reason", required=True)
    for level in (ls, show, approve, reject):
        client_options(level)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    api = client(args, environ)
    if api is None:
        return Exit.ERROR
    command = args.approvals_command
    try:
        if command == "list":
            query = {k: v for k, v in (("status", args.status), ("tool", args.tool),
                                       ("tenant", args.tenant)) if v and v != "all"}
            query["limit"] = str(args.limit)
            body = api.call("GET", "/v1/approvals?" + urllib.parse.urlencode(query))
            print(json.dumps(body, indent=2) if args.json else table(body["approvals"]))
            return Exit.OK
        path = f"/v1/approvals/{urllib.parse.quote(args.id, safe='')}"
        code = Exit.OK
        if command == "show":
            body = api.call("GET", path)
        elif command == "approve":
            body = api.call("POST", path + "/approve",
                            {"comment": args.comment} if args.comment else {})
            body = _until_done(api, path, body, args.wait)
            code = _BY_STATUS.get(body["status"], Exit.ERROR)
        else:
            body = api.call("POST", path + "/reject", {"reason": args.reason})
        print(json.dumps(body, indent=2) if args.json else details(body))
        if code in _NOTES:
            error = f", {body['error_code']}" if body.get("error_code") else ""
            print("note: " + _NOTES[code].format(
                votes=len(body["approvals"]), required=body["approvals_required"],
                status=body["status"], error=error, id=body["id"]), file=sys.stderr)
        return code
    except ApiError as exc:
        refused(exc, args.json)
        return Exit.REFUSED if exc.refused else Exit.ERROR
    except OSError as exc:
        unreachable(api, exc)
        return Exit.ERROR


def _until_done(api: Client, path: str, body: dict[str, Any], wait_s: float,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The approval once its call has ended (or `wait_s` passed): a call the vote approved
    may still be being sent when the API answers the vote."""
    deadline = clock() + wait_s
    while _BY_STATUS.get(body["status"]) is Exit.RUNNING and clock() < deadline:
        sleep(POLL_S)
        try:
            body = api.call("GET", path)
        except (ApiError, OSError) as exc:
            # The vote is recorded: a failed look afterwards leaves the outcome unknown.
            print(f"warning: cannot follow the approved call: {exc}", file=sys.stderr)
            break
    return body


def ago(stamp: str) -> str:
    seconds = time.time() - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return _span(seconds) + (" ago" if seconds >= 0 else " from now")


def _span(seconds: float) -> str:
    s = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _expires(stamp: str) -> str:
    seconds = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - time.time()
    return "expired" if seconds <= 0 else "in " + _span(seconds)


def table(approvals: list[dict[str, Any]]) -> str:
    if not approvals:
        return "no held calls"
    rows = [("ID", "STATUS", "TOOL", "TENANT", "ASKED BY", "AGE", "EXPIRES", "VOTES", "REASON")]
    for a in approvals:
        p = a["principal"]
        rows.append((a["id"], a["status"], a["tool"], p.get("tenant") or "-",
                     p.get("sub") or "-", ago(a["created_at"]),
                     _expires(a["expires_at"]) if a["status"] == "pending" else "-",
                     f"{len(a['approvals'])}/{a['approvals_required']}",
                     (a["reasons"][0] if a["reasons"] else "")[:60]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
                     + "  " + str(r[-1]) for r in rows)


def details(a: dict[str, Any]) -> str:
    p = a["principal"]
    lines = [
        f"approval     {a['id']}",
        f"status       {a['status']}",
        f"tool         {a['tool']}",
        f"asked by     {p.get('sub')} (agent {p.get('agent') or '-'}, tenant "
        f"{p.get('tenant') or '-'})",
        f"asked at     {a['created_at']} ({ago(a['created_at'])})",
        f"expires at   {a['expires_at']}"
        + (f" ({_expires(a['expires_at'])})" if a["status"] == "pending" else ""),
        f"approvals    {len(a['approvals'])} of {a['approvals_required']}"
        + (f", roles: {', '.join(a['approver_roles'])}" if a["approver_roles"] else ""),
        f"decision id  {a['decision_id']}",
        f"call hash    {a['call_hash']}",
        "why held:",
        *(f"  - {r}" for r in a["reasons"]),
        "arguments:",
        *("  " + line for line in json.dumps(a["args"], indent=2, sort_keys=True).splitlines()),
        *_call_lines(a.get("call")),
    ]
    for v in a["approvals"]:
        comment = f": {v['comment']}" if v.get("comment") else ""
        lines.append(f"approved by  {v['approver'].get('sub')} at {v['at']}{comment}")
    if a.get("reason"):
        lines.append(f"reason       {a['reason']}")
    if a.get("error_code"):
        lines.append(f"error code   {a['error_code']}")
    if a.get("result"):
        r = a["result"]
        lines.append(f"result       HTTP {r['status']}: {json.dumps(r['body'])[:200]}")
    return "\n".join(lines)


def _call_lines(call: dict[str, Any] | None) -> list[str]:
    """Everything that will be sent, as the upstream will receive it."""
    if not call:
        return []
    target = call["path"] + (f"?{call['query']}" if call["query"] else "")
    credential = call.get("credential_header")
    return [
        f"call         {call['method']} {target} to upstream {call['upstream']}",
        *(f"  {name}: {json.dumps(value)[1:-1]}" for name, value in call["headers"].items()),
        *([f"  {credential}: (the upstream credential, added by the gateway)"]
          if credential else []),
        # SECURITY: escaped, so line separators, bidi controls or terminal escapes in the
        # agent's body cannot make it look like something else.
        f"  body: {json.dumps(call['body']) if call['body'] else '(empty)'}",
    ]
