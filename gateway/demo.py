"""`toolgate demo`: the gateway on its embedded defaults, an example upstream, scripted calls.

Everything runs in this process on 127.0.0.1 with free ports: the gateway exactly as
`toolgate serve` runs it (in-process Rego, SQLite state, JSON-lines audit file, the shipped
`tool_specs/` and `policies/`), plus the clearly-labelled example upstream. Tokens are minted
with a key pair generated for this run, and the upstream credentials are random per run.

The scripted calls are written against the shipped specs and policies, so the demo always
runs on those (`shipped_root`), wherever it is started: from a wheel they are packaged
inside `gateway/_shipped/` (pyproject.toml maps the top-level directories there); from a
checkout they are the repository's own.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
import yaml
from aiohttp import web

from gateway.config import LogSettings
from gateway.config import load as load_config
from gateway.devtokens import DevKey
from gateway.example_upstream import CREDENTIAL_SOURCES, Credentials, make_app
from gateway.logs import configure_logging
from gateway.serve import _serve


@dataclass(frozen=True)
class Step:
    title: str
    method: str
    path: str
    token: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shipped_root() -> Path:
    """The directory holding the shipped `tool_specs/` and `policies/`: `gateway/_shipped`
    in an installed wheel, else the checkout this package was imported from (an editable
    install or PYTHONPATH). Never the current directory: the scripted calls only make sense
    against the shipped specs and policies."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_shipped", package.parent):
        if (candidate / "tool_specs").is_dir() and (candidate / "policies").is_dir():
            return candidate
    raise SystemExit(f"toolgate demo: the shipped tool_specs/ and policies/ are missing "
                     f"from this installation ({package})")


def write_config(work: Path, root: Path, upstream_port: int) -> Path:
    up = f"http://127.0.0.1:{upstream_port}"
    config = {
        "listen": f"127.0.0.1:{_free_port()}", "admin_listen": f"127.0.0.1:{_free_port()}",
        "tool_specs": [str(root / "tool_specs")], "policies": [str(root / "policies")],
        "store": "sqlite:///state/toolgate.db",
        "auth": {"issuer": "https://idp.example.com", "audience": "toolgate",
                 "algorithms": ["RS256"], "jwks_file": "keys/jwks.json"},
        # The credentials as the shipped toolgate.yaml sends them (`CREDENTIAL_SOURCES`).
        "upstreams": {
            api: {"url": up, "credential": {"header": s.header, "prefix": s.prefix,
                                            "env": s.env}}
            for api, s in CREDENTIAL_SOURCES.items()
        },
        "audit": {"file": "audit/toolgate.jsonl"},
    }
    path = work / "toolgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def steps(key: DevKey) -> list[Step]:
    agent = key.token("svc-support-agent", agent="support-bot", tenant="acme",
                      scopes=["crm:read", "orders:read", "support:write", "billing:refund",
                              "payroll:write"])
    reader = key.token("svc-readonly-agent", agent="faq-bot", tenant="acme",
                       scopes=["crm:read", "orders:read"])
    expired = key.token("svc-support-agent", tenant="acme", scopes=["crm:read"], ttl_s=-120)
    refund = {"tenant_id": "acme", "order_id": "ord_8842", "currency": "USD",
              "reason": "damaged"}
    return [
        Step("look up a customer (green)", "GET",
             "/crm/customers/cus_1001?tenant_id=acme", agent),
        Step("read an order (green)", "GET", "/orders/ord_8842?tenant_id=acme", agent),
        Step("add a ticket note (green)", "POST", "/support/tickets/tkt_5521/notes", agent,
             {"tenant_id": "acme", "note": "Customer reports a cracked screen."}),
        Step("refund $120 (yellow, within limit)", "POST", "/billing/refunds", agent,
             {**refund, "amount": 120}, {"Idempotency-Key": "refund-ord_8842-1"}),
        Step("refund $250 (yellow, over $200)", "POST", "/billing/refunds", agent,
             {**refund, "amount": 250}, {"Idempotency-Key": "refund-ord_8842-2"}),
        Step("refund without amount", "POST", "/billing/refunds", agent, refund,
             {"Idempotency-Key": "refund-ord_8842-3"}),
        Step("refund without Idempotency-Key", "POST", "/billing/refunds", agent,
             {**refund, "amount": 20}),
        Step("refund by a read-only agent", "POST", "/billing/refunds", reader,
             {**refund, "amount": 20}, {"Idempotency-Key": "refund-ord_8842-4"}),
        Step("look up another tenant's customer", "GET",
             "/crm/customers/cus_1001?tenant_id=globex", agent),
        Step("change payroll bank account (red)", "PUT",
             "/payroll/employees/emp_0042/bank-account", agent,
             {"tenant_id": "acme", "iban": "DE89370400440532013000"},
             {"Idempotency-Key": "bank-1"}),
        Step("call an undeclared admin API", "POST", "/admin/users", agent, {"role": "admin"}),
        Step("call with an expired token", "GET",
             "/crm/customers/cus_1001?tenant_id=acme", expired),
    ]


def outcome(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if status == 202:
        return "QUEUED for approval"
    if error is None:
        return "FORWARDED"
    labels = {"schema_invalid": "SCHEMA REJECTED", "insufficient_scope": "SCOPE REJECTED",
              "policy_denied": "POLICY DENIED", "unauthenticated": "UNAUTHENTICATED",
              "tool_not_allowed": "TOOL NOT ALLOWED",
              "idempotency_key_required": "KEY REQUIRED"}
    code = str(error["code"])
    return labels.get(code, code.upper())


def detail(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if error is None:
        if "approval_id" in body:
            return f"{body['approval_id']}: {'; '.join(body.get('reasons', []))}"
        return orjson.dumps(body).decode()
    if error.get("details"):
        d = error["details"][0]
        return f"{d['path']}: {d['message']}"
    if error.get("reasons"):
        return "; ".join(error["reasons"])
    return str(error["message"])


async def _run(work: Path, root: Path) -> int:
    credentials = Credentials.generate()
    upstream = web.AppRunner(make_app(credentials), access_log=None)
    await upstream.setup()
    upstream_port = _free_port()
    await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
    key = DevKey.generate()
    key.save(work / "keys")
    config_path = write_config(work, root, upstream_port)
    environ = credentials.environ()
    settings = load_config(config_path, environ)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(_serve(settings, environ, ready, stop))
    await asyncio.wait([server, asyncio.create_task(ready.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        await server  # raises the start-up error
    base = f"http://{settings.listen}"
    print(f"example upstream (stand-in for CRM/billing/HR APIs): http://127.0.0.1:{upstream_port}")
    print(f"gateway:  {base}   admin: http://{settings.admin_listen}")
    print(f"config:   {config_path}\n")
    print(f"{'#':>2}  {'call':<38} {'status':>6}  {'outcome':<20} detail")
    approval_poll = None
    try:
        async with aiohttp.ClientSession() as client:
            for i, step in enumerate(steps(key), 1):
                headers = {"Authorization": f"Bearer {step.token}", **step.headers}
                async with client.request(step.method, base + step.path, json=step.body,
                                          headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    status = resp.status
                if status == 202:
                    approval_poll = (body["approval_id"], step)
                print(f"{i:>2}  {step.title:<38} {status:>6}  {outcome(status, body):<20} "
                      f"{detail(body)[:100]}")
            if approval_poll is not None:
                await _approve_and_fetch(client, base=base, settings=settings, key=key,
                                         approval_id=approval_poll[0], step=approval_poll[1])
    finally:
        stop.set()
        await server
        await upstream.cleanup()
    audit = settings.audit.file
    assert audit is not None
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    kinds = Counter(r["kind"] for r in records)
    print(f"\naudit log: {audit}  ("
          + ", ".join(f"{n} {kind} records" for kind, n in sorted(kinds.items())) + ")")
    held = next((r for r in records if r["kind"] == "decision" and r.get("approval_id")), None)
    if held is not None:
        print(f"the held refund's decision record:\n  {orjson.dumps(held).decode()}")
    print(f"$ toolgate audit verify {audit}\n  "
          + await _toolgate("audit", "verify", str(audit)))
    return 0


async def _toolgate(*args: str) -> str:
    """Run `toolgate ARGS…` in a subprocess; what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode().strip()


async def _cli(*args: str, token: str, admin: str) -> str:
    """Run `toolgate approvals ...` as a user would, in a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "approvals", "--admin-url", admin, *args,
        env={**os.environ, "TOOLGATE_APPROVER_TOKEN": token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode()


async def _approve_and_fetch(client: aiohttp.ClientSession, *, base: str, settings: Any,
                             key: DevKey, approval_id: str, step: Step) -> None:
    admin = f"http://{settings.admin_listen}"
    approver = key.token("jane.doe", agent=None, tenant="acme", roles=["billing-approver"],
                         scopes=["toolgate:approve"])
    print("\nan approver works the queue (TOOLGATE_APPROVER_TOKEN holds her token):")
    for args in (("list",), ("approve", approval_id, "--comment", "damaged on arrival")):
        print(f"$ toolgate approvals {shlex.join(args)}")
        out = await _cli(*args, token=approver, admin=admin)
        print("  " + out.rstrip().replace("\n", "\n  "))
    agent = {"Authorization": f"Bearer {step.token}"}
    async with client.get(f"{base}/v1/approvals/{approval_id}", headers=agent) as resp:
        polled = await resp.json()
    result = polled.get("result") or {}
    print(f"\nthe agent polls /v1/approvals/{approval_id}: status={polled['status']}, "
          f"upstream answered {result.get('status')} {orjson.dumps(result.get('body')).decode()}")
    async with client.request(step.method, base + step.path, json=step.body,
                              headers={**agent, **step.headers}) as resp:
        replay = resp.headers.get("Idempotent-Replayed")
        print(f"the agent retries with the same Idempotency-Key: {resp.status}, "
              f"Idempotent-Replayed: {replay} (not sent upstream again)")


def run_demo(directory: Path | None = None) -> int:
    """Run the demo; its config, keys, state and audit log stay in `directory` afterwards."""
    root = shipped_root()
    if directory is None:
        work = Path(tempfile.mkdtemp(prefix="toolgate-demo-"))
    else:
        work = directory.resolve()
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"toolgate demo: {work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
    # The gateway's own log, as `serve` writes it (no exception message, so no token), on
    # one console line each and kept to warnings, so the demo's table reads cleanly.
    configure_logging(LogSettings(level="warning", format="console"))
    return uvloop.run(_run(work, root))
