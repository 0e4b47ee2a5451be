"""OpenTelemetry export: real calls through a real gateway, spans received by an in-process
OTLP/HTTP collector on loopback and decoded with the OTLP protobuf messages. With tracing
off, nothing of OpenTelemetry is even imported (checked in a fresh interpreter)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.app import build_apps
from gateway.devtokens import DevKey
from gateway.pipeline import STAGES
from gateway.web import RUNTIME
from tests.support import ROOT, UPSTREAM_SECRET, Recorder, config

AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
CANARIES = ("canary-name-5d1e", "canary@example.com", "canary-item-9b7c", "canary-q-3f0a")


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its resource."""

    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            self.resources.append(attrs(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def roots(self) -> list[Span]:
        return [s for s in self.spans if s.name.startswith("toolgate.call")]

    def root_of(self, decision_id: str) -> Span:
        [root] = [s for s in self.roots() if attrs(s.attributes)["toolgate.decision_id"]
                  == decision_id]
        return root

    def children(self, root: Span) -> list[Span]:
        return sorted((s for s in self.spans if s.parent_span_id == root.span_id),
                      key=lambda s: s.start_time_unix_nano)


def value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    received = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", received.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield received, str(server.make_url("/v1/traces"))
    await server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield recorder, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def loop_guard(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Debug mode logs every callback slower than 0.1 s; any such log fails the test: the
    spans must be exported off the event loop."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.1
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    loop.set_debug(False)
    slow = [r.getMessage() for r in caplog.records
            if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, f"the event loop was blocked: {slow}"


async def test_one_span_per_call_a_child_per_stage_and_the_upstream(
        tmp_path: Path, dev_key: DevKey, collector: tuple[Collector, str],
        upstream: tuple[Recorder, str], agent_token: str, loop_guard: None) -> None:
    received, endpoint = collector
    recorder, upstream_url = upstream
    settings = config(tmp_path, dev_key, upstream_url,
                      tracing={"otlp_endpoint": endpoint, "service_name": "toolgate-test"})
    app, _admin = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET})
    auth = {"Authorization": f"Bearer {agent_token}"}
    async with TestClient(TestServer(app)) as client:
        assert client.server.app[RUNTIME].tracing.on
        calls: dict[str, tuple[int, str]] = {}

        async def call(name: str, method: str, path: str, **kwargs: Any) -> None:
            resp = await client.request(method, path, **kwargs)
            await resp.read()
            calls[name] = (resp.status, resp.headers["X-Request-Id"])

        await call("forwarded", "POST", "/echo/items", headers={
            **auth, "traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01",
            "Idempotency-Key": "trace-1"},
            json={"name": CANARIES[0], "count": 3, "contact": CANARIES[1]})
        await call("path_and_query", "GET", f"/echo/items/{CANARIES[2]}?q={CANARIES[3]}",
                   headers={**auth, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"})
        await call("unauthenticated", "GET", "/echo/items/x", headers={
            "Authorization": "Bearer not-a-token",
            "traceparent": f"00-{AGENT_TRACE.upper()}-{AGENT_SPAN}-01"})
        await call("unknown_route", "GET", "/no/such/tool", headers=auth)
        await call("bad_json", "POST", "/echo/items", data=b"{nope",
                   headers={**auth, "Content-Type": "application/json"})
        await call("upstream_down", "GET", "/echo/down", headers=auth)
    # Closing the gateway flushed every span to the collector.
    assert {k: status for k, (status, _) in calls.items()} == {
        "forwarded": 201, "path_and_query": 201, "unauthenticated": 401,
        "unknown_route": 403, "bad_json": 400, "upstream_down": 502}
    assert received.resources and all(r["service.name"] == "toolgate-test"
                                      for r in received.resources)
    assert len(received.roots()) == len(calls), "one span per call, no more"
    audit = records_of(settings)
    roots = {name: received.root_of(decision_id) for name, (_, decision_id) in calls.items()}
    for name, root in roots.items():
        # The audit records of the call (decision and outcome) name the span's trace.
        mine = [r for r in audit if r["decision_id"] == calls[name][1]]
        assert mine and {r["trace_id"] for r in mine} == {root.trace_id.hex()}, name
        assert root.kind == Span.SPAN_KIND_SERVER

    # A valid agent traceparent: the call continues the agent's trace, as its child.
    fwd = roots["forwarded"]
    assert (fwd.trace_id.hex(), fwd.parent_span_id.hex()) == (AGENT_TRACE, AGENT_SPAN)
    assert fwd.name == "toolgate.call echo_post"
    assert attrs(fwd.attributes) == {
        "toolgate.decision_id": calls["forwarded"][1], "http.request.method": "POST",
        "toolgate.entrance": "rest", "toolgate.tool": "echo_post", "http.route": "/echo/items",
        "toolgate.action": "allow", "toolgate.stage": "policy",
        "toolgate.principal.sub": "svc-agent", "toolgate.principal.tenant": "acme",
        "http.response.status_code": 201}
    assert fwd.status.code == Status.STATUS_CODE_UNSET
    children = received.children(fwd)
    assert [c.name for c in children] == [f"toolgate.{stage}" for stage, _ in STAGES] + [
        "toolgate.upstream echo"]
    assert all(c.trace_id == fwd.trace_id for c in children)
    stage_span = children[0]
    assert attrs(stage_span.attributes) == {"toolgate.stage": "authenticate"}
    assert stage_span.kind == Span.SPAN_KIND_INTERNAL
    up = children[-1]
    assert up.kind == Span.SPAN_KIND_CLIENT
    assert attrs(up.attributes) == {"toolgate.upstream": "echo", "http.request.method": "POST",
                                    "url.template": "/v1/items",
                                    "http.response.status_code": 201}
    assert fwd.start_time_unix_nano <= up.start_time_unix_nano
    assert up.end_time_unix_nano <= fwd.end_time_unix_nano
    # The upstream gets the agent's trace context as the plan has it (README, Tracing).
    assert recorder.headers(0)["traceparent"] == f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"

    # The agent's sampled flag off: the gateway still records its call, in the agent's trace.
    pq = roots["path_and_query"]
    assert (pq.trace_id.hex(), pq.parent_span_id.hex()) == ("ab" * 16, "cd" * 8)
    assert attrs(pq.attributes)["http.route"] == "/echo/items/{item_id}"

    # An invalid traceparent (uppercase) is ignored: a new trace, the call its root.
    denied = roots["unauthenticated"]
    assert denied.trace_id.hex() != AGENT_TRACE.lower() and not denied.parent_span_id
    assert attrs(denied.attributes)["toolgate.stage"] == "authenticate"
    assert attrs(denied.attributes)["toolgate.code"] == "unauthenticated"
    assert "toolgate.principal.sub" not in attrs(denied.attributes)
    assert (denied.status.code, denied.status.message) == (Status.STATUS_CODE_ERROR,
                                                           "unauthenticated")
    [auth_span] = received.children(denied)  # only the stage that ran
    assert auth_span.name == "toolgate.authenticate"
    assert (auth_span.status.code, attrs(auth_span.attributes)["toolgate.code"]) == (
        Status.STATUS_CODE_ERROR, "unauthenticated")

    # Entrance refusals: a span each, no children, the stage and code that refused.
    for name, stage, code, tool in (("unknown_route", "route", "tool_not_allowed", None),
                                    ("bad_json", "parse", "invalid_json", "echo_post")):
        root = roots[name]
        got = attrs(root.attributes)
        assert (got["toolgate.stage"], got["toolgate.code"], got["toolgate.action"]) == (
            stage, code, "deny"), name
        assert got.get("toolgate.tool") == tool
        assert root.name == ("toolgate.call" if tool is None else f"toolgate.call {tool}")
        assert root.status.code == Status.STATUS_CODE_ERROR
        assert received.children(root) == []

    # The upstream could not be reached: its span and the call's fail with the code.
    down = roots["upstream_down"]
    assert (attrs(down.attributes)["toolgate.code"], down.status.code) == (
        "upstream_error", Status.STATUS_CODE_ERROR)
    down_up = received.children(down)[-1]
    assert down_up.name == "toolgate.upstream down"
    assert attrs(down_up.attributes)["toolgate.code"] == "upstream_error"

    # SECURITY: no argument value, token or credential anywhere in what was exported.
    exported = str([(s.name, attrs(s.attributes), s.status.message) for s in received.spans])
    exported += str(received.resources)
    for secret in (*CANARIES, agent_token, UPSTREAM_SECRET, "not-a-token"):
        assert secret not in exported, secret


def records_of(settings: Any) -> list[dict[str, Any]]:
    path = settings.audit.file
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


OFF_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from aiohttp.test_utils import TestClient, TestServer
    from gateway.app import build_apps
    from gateway.devtokens import DevKey
    from gateway.web import RUNTIME
    from tests.support import UPSTREAM_SECRET, config, upstream_server

    async def main(directory):
        key = DevKey.generate()
        async with upstream_server() as (recorder, url):
            settings = config(directory, key, url)
            app, _ = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET})
            async with TestClient(TestServer(app)) as client:
                assert not client.server.app[RUNTIME].tracing.on
                token = key.token("svc", tenant="acme", scopes=["echo:read"])
                resp = await client.get("/echo/items/x",
                                        headers={"Authorization": f"Bearer {token}"})
                assert resp.status == 201, resp.status
                assert "traceparent" not in recorder.seen[-1].headers
                mine = [r for r in records_from(settings)
                        if r["decision_id"] == resp.headers["X-Request-Id"]]
                assert [r["kind"] for r in mine] == ["decision", "outcome"], mine
                [trace_id] = {r["trace_id"] for r in mine}
                assert len(trace_id) == 32 and int(trace_id, 16), trace_id
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        print("loaded:", loaded)

    def records_from(settings):
        import orjson
        return [orjson.loads(l) for l in settings.audit.file.read_bytes().splitlines()]

    asyncio.run(main(Path(sys.argv[1])))
""")


def test_tracing_off_imports_and_builds_nothing_of_opentelemetry(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", OFF_SCRIPT, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout


def test_an_endpoint_without_the_extra_is_one_clear_error(tmp_path: Path,
                                                          dev_key: DevKey) -> None:
    """`toolgate serve` where the OpenTelemetry packages cannot be imported."""
    config(tmp_path, dev_key, "http://127.0.0.1:9",
           tracing={"otlp_endpoint": "http://127.0.0.1:4318/v1/traces"})
    script = ("import sys; sys.modules['opentelemetry'] = None\n"  # as if not installed
              "from gateway.cli.main import main\n"
              f"sys.exit(main(['serve', '--config', {str(tmp_path / 'toolgate.yaml')!r}],"
              " {'UPSTREAM_TOKEN': 'x'}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: tracing.otlp_endpoint: the OpenTelemetry packages "
                               "are not installed")
    assert "pip install 'toolgate[otel]'" in lines[0]
    assert not (tmp_path / "audit").exists(), "nothing started"
