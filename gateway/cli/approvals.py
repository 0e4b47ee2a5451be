"""`toolgate approvals list|show|approve|reject`: the approval queue from a terminal.

A thin client of the admin API (no direct store access, so the same rules and audit apply
as for any other approver). The token comes from `--token` or `TOOLGATE_APPROVER_TOKEN`,
the API from `--admin-url` or `TOOLGATE_ADMIN_URL` (default http://127.0.0.1:8081).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
TIMEOUT_S = 30


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{error.get('code', status)}: {error.get('message', body)}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list, show, approve and reject held calls")
    p.add_argument("--admin-url", help=f"admin API (default $TOOLGATE_ADMIN_URL or "
                                       f"{DEFAULT_ADMIN_URL})")
    p.add_argument("--token", help="approver JWT (default $TOOLGATE_APPROVER_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    asub = p.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND")
    ls = asub.add_parser("list", help="held calls, newest first")
    ls.add_argument("--status", default="pending",
                    help="pending (default), approved, executing, executed, failed, "
                         "outcome_unknown, rejected, expired, or 'all'")
    ls.add_argument("--tool")
    ls.add_argument("--tenant")
    ls.add_argument("--limit", type=int, default=50)
    show = asub.add_parser("show", help="one held call in full")
    show.add_argument("id")
    approve = asub.add_parser("approve", help="approve a held call")
    approve.add_argument("id")
    approve.add_argument("--comment")
    reject = asub.add_parser("reject", help="reject a held call with a reason")
    reject.add_argument("id")
    reject.add_argument("--reason", required=True)


def _endpoint(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The admin API and the token, from the options or the environment."""
    token = args.token or environ.get("TOOLGATE_APPROVER_TOKEN")
    if not token:
        print("error: a token with the approver scope is needed (--token or "
              "$TOOLGATE_APPROVER_TOKEN)", file=sys.stderr)
    return args.admin_url or environ.get("TOOLGATE_ADMIN_URL") or DEFAULT_ADMIN_URL, token


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    base, token = _endpoint(args, environ)
    if not token:
        return 2
    command = args.approvals_command
    try:
        if command == "list":
            query = {k: v for k, v in (("status", args.status), ("tool", args.tool),
                                       ("tenant", args.tenant)) if v and v != "all"}
            query["limit"] = str(args.limit)
            body = _call(base, token, "GET", "/v1/approvals?" + urllib.parse.urlencode(query))
            print(json.dumps(body, indent=2) if args.json else table(body["approvals"]))
            return 0
        path = f"/v1/approvals/{urllib.parse.quote(args.id, safe='')}"
        if command == "show":
            body = _call(base, token, "GET", path)
        elif command == "approve":
            body = _call(base, token, "POST", path + "/approve",
                         {"comment": args.comment} if args.comment else {})
        else:
            body = _call(base, token, "POST", path + "/reject", {"reason": args.reason})
        print(json.dumps(body, indent=2) if args.json else details(body))
        return 0
    except ApiError as exc:
        if args.json:
            print(json.dumps(exc.body, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the admin API at {base}: {exc}", file=sys.stderr)
        return 2


def _call(base: str, token: str, method: str, path: str,
          payload: Mapping[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    if not base.startswith(("http://", "https://")):
        raise OSError(f"{base!r} is not an http(s) URL")
    req = urllib.request.Request(  # noqa: S310 (scheme checked above)
        base.rstrip("/") + path, data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        raise ApiError(exc.code, body) from None


def _ago(stamp: str) -> str:
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
                     p.get("sub") or "-", _ago(a["created_at"]),
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
        f"asked at     {a['created_at']} ({_ago(a['created_at'])})",
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


def add_kill_parsers(sub: Any) -> None:
    for name, helptext in (("kill", "stop calls by scope, on every replica within a second"),
                           ("revive", "clear a kill switch")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--scope", required=True,
                       help="global, tenant:<tenant>, agent:<agent> or tool:<tool name>")
        if name == "kill":
            p.add_argument("--reason", required=True)
        p.add_argument("--admin-url")
        p.add_argument("--token", help="JWT with the approver scope "
                                       "(default $TOOLGATE_APPROVER_TOKEN)")
        p.add_argument("--json", action="store_true")


def run_kill(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    base, token = _endpoint(args, environ)
    if not token:
        return 2
    try:
        if args.command == "kill":
            body = _call(base, token, "POST", "/v1/killswitch",
                         {"scope": args.scope, "reason": args.reason})
            text = f"killed {body['scope']}: {body['reason']} (since {body['since']})"
        else:
            body = _call(base, token, "DELETE",
                         f"/v1/killswitch/{urllib.parse.quote(args.scope, safe='')}")
            text = f"revived {body['scope']}"
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the admin API at {base}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2) if args.json else text)
    return 0
