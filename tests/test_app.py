"""The whole app in-process through aiohttp's test server, with a real upstream on
loopback and the loop in debug mode: a callback that blocks the loop fails the test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_apps
from gateway.approvals.model import call_hash
from gateway.config import load as load_config
from gateway.devtokens import DevKey
from gateway.web import RUNTIME

ROOT = Path(__file__).resolve().parent.parent
REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}
SLOW_CALLBACK_S = 0.1
SEEN = web.AppKey("seen", list)


@pytest.fixture
def loop_guard(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Debug mode logs every callback slower than SLOW_CALLBACK_S; any such log fails."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    slow = [r.getMessage() for r in records
            if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, f"the event loop was blocked: {slow}"


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        return web.json_response({"refund_id": "re_1", "status": "created"}, status=201)

    app = web.Application()
    app[SEEN] = seen
    app.router.add_route("*", "/{tail:.*}", handle)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def client(tmp_path: Path, dev_key: DevKey, upstream: TestServer,
                 loop_guard: None) -> AsyncIterator[TestClient[Any, Any]]:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_S
    dev_key.save(tmp_path / "keys")
    (tmp_path / "toolgate.yaml").write_text(yaml.safe_dump({
        "tool_specs": [str(ROOT / "tool_specs")], "policies": [str(ROOT / "policies")],
        "auth": {"issuer": "https://idp.example.com", "audience": "toolgate",
                 "algorithms": ["RS256"], "jwks_file": "keys/jwks.json"},
        "upstreams": {name: {"url": str(upstream.make_url("")).rstrip("/"),
                             "credential": {"header": "Authorization", "env": "SECRET"}}
                      for name in ("crm", "billing", "hr")},
    }))
    settings = load_config(tmp_path / "toolgate.yaml", {})
    app, _admin = build_apps(settings, {"SECRET": "s3cret"})
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    loop.set_debug(False)


def audit(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    path = client.server.app[RUNTIME].settings.audit.file
    assert path is not None
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_queued_call_stores_exactly_what_would_be_sent(
        client: TestClient[Any, Any], dev_key: DevKey, upstream: TestServer) -> None:
    token = dev_key.token("svc", tenant="acme", scopes=["billing:refund"])
    raw = orjson.dumps(REFUND) + b"  "
    resp = await client.post("/billing/refunds", data=raw, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": "exact-1",
        "Content-Type": "application/json", "traceparent":
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert resp.status == 202
    approval_id = (await resp.json())["approval_id"]
    approval = await client.server.app[RUNTIME].store.get_approval(approval_id)
    assert approval is not None
    assert approval.plan.body == raw
    assert approval.plan.path == "/v1/refunds"
    assert approval.plan.upstream == "billing"
    headers = {k.lower() for k in approval.plan.headers}
    assert "authorization" not in headers
    assert "traceparent" in headers
    assert approval.call_hash == call_hash("create_refund_request", REFUND, "svc", "acme")
    assert approval.idempotency_key == "exact-1"
    assert upstream.app[SEEN] == []


async def test_store_failure_is_503_and_audited(
        client: TestClient[Any, Any], dev_key: DevKey) -> None:
    token = dev_key.token("svc", tenant="acme", scopes=["billing:refund"])
    await client.server.app[RUNTIME].store.close()
    resp = await client.post("/billing/refunds", json=REFUND, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": "store-down"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "store_unavailable"
    request_id = resp.headers["X-Request-Id"]
    mine = [r for r in audit(client) if r["decision_id"] == request_id]
    # The key is looked up among held calls before anything else: that fails first.
    assert [r["kind"] for r in mine] == ["decision"]
    assert mine[0]["code"] == "store_unavailable"
    assert mine[0]["stage"] == "idempotency"


async def test_forwarded_call_through_the_app(client: TestClient[Any, Any], dev_key: DevKey,
                                              upstream: TestServer) -> None:
    token = dev_key.token("svc", tenant="acme", scopes=["billing:refund"])
    resp = await client.post("/billing/refunds", json={**REFUND, "amount": 20}, headers={
        "Authorization": f"Bearer {token}", "Idempotency-Key": "app-fwd"})
    assert resp.status == 201
    [seen] = upstream.app[SEEN]
    assert seen.headers["Authorization"] == "s3cret"
    assert seen.headers["Idempotency-Key"] == "app-fwd"
    kinds = [r["kind"] for r in audit(client) if r["decision_id"] == resp.headers[
        "X-Request-Id"]]
    assert kinds == ["decision", "outcome"]
