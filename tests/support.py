"""In-process test support: a real runtime (SQLite store, embedded Rego with the shipped
policies, the development key, a JSON-lines audit file) around a settable clock, and a
recording upstream on loopback — the one fake, standing for the APIs outside the product.

Stage and act tests build a `ToolCall` the way the REST entrance does and run the real
code against this runtime; nothing of the gateway's own is mocked.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from gateway.bundle import Bundle, load_bundle
from gateway.bundle.routes import decode_params
from gateway.config import Settings
from gateway.config import load as load_config
from gateway.core.call import Entrance, RequestFacts, ToolCall
from gateway.core.context import CallContext
from gateway.devtokens import DevKey
from gateway.runtime import Runtime, open_runtime

ROOT = Path(__file__).resolve().parent.parent
E2E = ROOT / "tests" / "e2e"
UPSTREAM_SECRET = "s3cret-upstream"
START = 1_800_000_000.0


@dataclass
class FakeClock:
    """Time that moves only when a test says so. `policy_cost_s`, when set, is how long
    every policy evaluation appears to take (the monotonic clock jumps while it runs)."""

    now: float = START
    mono: float = 1000.0
    step_s: float = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        self.mono += self.step_s
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@dataclass
class Recorder:
    """A loopback upstream that records what it received. `/v1/status/<n>` answers n;
    `/v1/hang`, or any request with an `X-Gate` header, waits until `release` is set."""

    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.seen.append(request)
        path = request.rel_url.path
        if path.startswith("/v1/status/"):
            status = int(path.rsplit("/", 1)[1])
            return web.json_response({"status": status}, status=status)
        if path.startswith("/v1/hang") or "X-Gate" in request.headers:
            await self.release.wait()
        return web.json_response({"path": request.raw_path, "n": len(self.seen)}, status=201)

    def headers(self, i: int = -1) -> dict[str, str]:
        return {k.lower(): v for k, v in self.seen[i].headers.items()}


def config(directory: Path, key: DevKey, upstream_url: str, **extra: Any) -> Settings:
    """A config for the shipped specs and policies plus the end-to-end test tools."""
    key.save(directory / "keys")
    raw: dict[str, Any] = {
        "tool_specs": [str(ROOT / "tool_specs"), str(E2E / "specs"),
                       str(E2E / "specs_state"), str(E2E / "specs_approvals")],
        "policies": [str(ROOT / "policies"), str(E2E / "policies_approvals")],
        "store": "sqlite:///state/toolgate.db",
        "auth": {"issuer": "https://idp.example.com", "audience": "toolgate",
                 "algorithms": ["RS256"], "jwks_file": "keys/jwks.json"},
        "upstreams": {name: {"url": upstream_url, "credential": {
            "header": "Authorization", "prefix": "Bearer ", "env": "UPSTREAM_TOKEN"}}
            for name in ("crm", "billing", "hr", "echo")},
        "forwarded_host": "gateway.internal",
        "audit": {"file": "audit/toolgate.jsonl"},
        **extra,
    }
    raw["upstreams"]["down"] = {"url": "http://127.0.0.1:9"}
    (directory / "toolgate.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_config(directory / "toolgate.yaml", {})


@asynccontextmanager
async def upstream_server() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield recorder, str(server.make_url("")).rstrip("/")
    finally:
        recorder.release.set()
        await server.close()


@asynccontextmanager
async def runtime(directory: Path, key: DevKey, upstream_url: str, clock: FakeClock,
                  **extra: Any) -> AsyncIterator[Runtime]:
    settings = config(directory, key, upstream_url, **extra)
    bundle = load_bundle(settings, clock)
    async with open_runtime(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, bundle,
                            clock) as rt:
        yield rt


def records(rt: Runtime, *, audit_events: bool = False) -> list[dict[str, Any]]:
    """The runtime's audit records; without the log's own (`kind: audit`: opened, closed,
    reopened…) unless asked for."""
    path = rt.settings.audit.file
    assert path is not None
    if not path.exists():
        return []
    found = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [r for r in found if audit_events or r.get("kind") != "audit"]


def tool_call(bundle: Bundle, method: str, path: str, *, token: str | None = None,
              body: Any = None, query: str = "",
              headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
              request_id: str = "req_test", now: float = START) -> ToolCall:
    """A tool call as the REST entrance would make it (the route must exist)."""
    found = bundle.routes.match(method, path)
    assert found is not None, f"no tool for {method} {path}"
    spec, raw = found
    params = decode_params(spec.route, raw)
    raw_body = b"" if body is None else orjson.dumps(body)
    hdrs: CIMultiDict[str] = CIMultiDict(headers or {})
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    query_args = dict(p.split("=", 1) for p in query.split("&") if p)
    facts = RequestFacts(request_id=request_id, entrance=Entrance.REST, method=method,
                         path=path, source_ip="10.1.2.3", scheme="http", received_at=now,
                         started=1000.0)
    return ToolCall(facts=facts, spec=spec, args={**params, **query_args, **(body or {})},
                    body=raw_body, path_params=params, query=query, headers=hdrs,
                    authorization=hdrs.get("Authorization"),
                    key_hint=hdrs.get("Idempotency-Key"), run_hint=hdrs.get("X-Agent-Run-Id"))


def context(rt: Runtime, method: str, path: str, **kwargs: Any) -> CallContext:
    bundle = rt.bundles.current
    return CallContext(tool_call(bundle, method, path, **kwargs), bundle)


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """The file made immutable (`chattr +i`) while inside: every write to it — through a
    descriptor already open too — fails with EPERM, even for root. Restored on exit."""
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
