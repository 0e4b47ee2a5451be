"""Schemathesis against the admin API's OpenAPI document (`gateway.admin.openapi`), on a
throwaway gateway: no 5xx, and every response matches the document.

The gateway and its admin app run in-process on loopback (real store, real Rego, a recording
upstream), on an event loop of their own in a background thread, since schemathesis calls the
API synchronously. A few calls are held for approval first, and a share of the generated
approval ids is swapped for them, so approve, reject and show reach their 200s and 409s, not
only 404s.

Each operation runs with an approver's token, with a token without the approver scope, and
with no token. The checks: no server error; every status, content type and body is the
document's; a request the document forbids is refused, and — with the approver's token — one
it allows is not refused as malformed (no 400: 403, 404 and 409 are the queue's answers).
Generation is derandomized and bounded, so with a given schemathesis version every run sends
the same requests; the whole module takes a few seconds.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.admin import api, openapi
from gateway.admin.api import RUNTIME_OF
from gateway.admin.openapi import ADMIN_OPENAPI
from gateway.app import build_apps
from gateway.bundle.patterns import search
from gateway.devtokens import DevKey
from gateway.state.killswitch import SCOPE
from gateway.web import RUNTIME
from tests.support import UPSTREAM_SECRET, FakeClock, config, upstream_server

EXAMPLES = 40  # per operation and identity; the coverage phase adds its own few
CONFIG = schemathesis.Config.from_dict({
    "seed": 0,
    "generation": {"deterministic": True, "database": "none",
                   # the token is the test's, not generated; unknown query parameters are
                   # ignored, as HTTP APIs do
                   "with-security-parameters": False, "allow-extra-parameters": False},
    # Valid input is answered, not refused as malformed: the queue's own refusals (no such
    # approval, not pending, wrong role) and a kill switch for a tool or tenant the gateway
    # does not know (422 unknown_scope) are the only 4xx a valid request may get.
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 403, 404, 409,
                                                                  422]}},
})
SCHEMA = schemathesis.openapi.from_dict(ADMIN_OPENAPI, config=CONFIG)
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance, negative_data_rejection]
UNSECURED = {"/healthz", "/readyz", "/metrics", "/openapi.json"}

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD", "amount": 250}
# Calls held for approval first: (agent path, arguments); two-person needs two approvers.
HOLDS = [("/billing/refunds", REFUND)] * 4 + [("/echo/two-person",
                                              {"tenant_id": "acme", "amount": 5})] * 2


@dataclass
class Gateway:
    admin_url: str
    approver: str    # an approver's token (both roles the held calls need)
    outsider: str    # a valid token without the approver scope
    held: list[str] = field(default_factory=list)

    def held_id(self, case: schemathesis.Case) -> None:
        """Swap about half the generated approval ids for held ones: each operation its own
        share, so approve and reject both find pending calls."""
        ids = case.path_parameters
        if not ids or "approval_id" not in ids or case.meta.generation.mode.is_negative:
            return
        n = zlib.crc32(str(ids["approval_id"]).encode())
        if n % 2:
            share = self.held[0::2] if case.path.endswith("/approve") else self.held[1::2]
            ids["approval_id"] = share[n // 2 % len(share)]


async def _serve(app: web.Application, stack: AsyncExitStack) -> str:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _start(directory: Path, key: DevKey, agent_token: str,
                 stack: AsyncExitStack) -> Gateway:
    _, url = await stack.enter_async_context(upstream_server())
    settings_ = config(directory, key, url, approvals={"sweep_interval_ms": 3_600_000})
    # A clock that stands still: nothing expires, and the admin port's refusal budget for
    # callers without a token does not refill (the no-token run ends in 429s, as it should).
    app, admin = build_apps(settings_, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, FakeClock())
    admin[RUNTIME_OF] = lambda: app.get(RUNTIME)
    agent_url = await _serve(app, stack)  # the gateway app first: it opens the runtime
    gw = Gateway(await _serve(admin, stack),
                 approver=key.token("alice", tenant="acme", roles=["billing-approver",
                                                                   "finance"],
                                    scopes=["toolgate:approve"]),
                 outsider=key.token("mallory", tenant="acme", roles=["billing-approver"],
                                    scopes=["crm:read"]))
    async with aiohttp.ClientSession() as session:
        for n, (path, args) in enumerate(HOLDS):
            async with session.post(f"{agent_url}{path}", json=args, headers={
                    "Authorization": f"Bearer {agent_token}",
                    "Idempotency-Key": f"held-{n}"}) as resp:
                assert resp.status == 202, await resp.text()
                gw.held.append((await resp.json())["approval_id"])
    return gw


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
            agent_token: str) -> Iterator[Gateway]:
    """A gateway on loopback, served from a thread of its own for the module's tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="toolgate-openapi", daemon=True)
    thread.start()
    stack = AsyncExitStack()
    try:
        yield asyncio.run_coroutine_threadsafe(
            _start(tmp_path_factory.mktemp("openapi"), dev_key, agent_token, stack),
            loop).result(60)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_document_is_what_is_served_and_agrees_with_the_code(gateway: Gateway) -> None:
    resp = requests.get(f"{gateway.admin_url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == ADMIN_OPENAPI
    assert (openapi.MAX_TEXT, openapi.MAX_LIST) == (api.MAX_TEXT, api.MAX_LIST)
    admin = web.Application()
    api.add_routes(admin)
    routes = {(r.method.lower(), r.resource.canonical) for r in admin.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    assert routes == {(method, path) for path, item in ADMIN_OPENAPI["paths"].items()
                      for method in item}


def test_the_patterns_read_as_the_api_reads_them() -> None:
    """The document's patterns, read as ECMA-262 (as JSON Schema and clients read them),
    accept exactly the characters the API's Python accepts. Every whitespace character is
    in the BMP."""
    for c in map(chr, [*range(0xD800), *range(0xE000, 0x10000), 0x10000, 0x1F600, 0x10FFFF]):
        assert search(openapi.NOT_SPACE, c) == bool(c.strip()), hex(ord(c))
        for scope in (f"tenant:{c}", f"agent:x{c}", f"tool:{c}"):
            assert search(openapi.SCOPE_PATTERN, scope) == bool(SCOPE.fullmatch(scope)), scope
    for scope in ("global\n", "tool:x\n", " global"):
        assert not search(openapi.SCOPE_PATTERN, scope)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/killswitch", {"scope": " global", "reason": "incident"}),
    ("POST", "/v1/killswitch", {"scope": "global\n", "reason": "incident"}),
    ("POST", "/v1/killswitch", {"scope": "tool:Echo", "reason": "incident"}),
    ("POST", "/v1/killswitch", {"scope": "tenant:\x1f", "reason": "incident"}),
    ("POST", "/v1/killswitch", {"scope": "tool:echo_item", "reason": " \x1c\x85 "}),
    ("POST", "/v1/killswitch", {"scope": "tool:echo_item", "reason": "x", "force": "yes"}),
    ("POST", "/v1/killswitch", {"scope": "tool:echo_item", "reason": "x", "force": None}),
    ("DELETE", "/v1/killswitch/global%0A", None),
    ("POST", "/v1/approvals/apr_x/reject", {"reason": "\u3000"}),
    ("POST", "/v1/approvals/apr_x/approve", {"comment": ""}),
    ("GET", "/v1/approvals?limit=%205", None),
    ("GET", "/v1/approvals?limit=1_0", None),
    ("GET", "/v1/approvals?limit=%D9%A5", None),
])
def test_what_the_document_forbids_is_refused(gateway: Gateway, method: str, path: str,
                                              body: dict[str, Any] | None) -> None:
    """Edges where ECMA-262 and Python read text differently, pinned (the generated runs
    may not reach them)."""
    resp = requests.request(method, gateway.admin_url + path, json=body, timeout=10,
                            headers={"Authorization": f"Bearer {gateway.approver}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_arguments"


def _secured(case: schemathesis.Case) -> bool:
    """An operation that needs a token, called with its own method (the coverage phase also
    tries others, which the admin port answers 404 `not_found`)."""
    return case.path not in UNSECURED and case.method.upper() == case.operation.method.upper()


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_as_an_approver(case: schemathesis.Case, gateway: Gateway) -> None:
    gateway.held_id(case)
    response = case.call_and_validate(
        base_url=gateway.admin_url, headers={"Authorization": f"Bearer {gateway.approver}"},
        checks=[*CONFORMANCE, positive_data_acceptance])
    if _secured(case):  # the token works, and has both roles the held calls need
        assert response.status_code not in {401, 403, 429}, response.text


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_the_approver_scope(case: schemathesis.Case, gateway: Gateway) -> None:
    response = case.call_and_validate(
        base_url=gateway.admin_url, headers={"Authorization": f"Bearer {gateway.outsider}"},
        checks=CONFORMANCE)
    if _secured(case):  # refused; past a burst of such refusals, slowed down
        assert (response.status_code, response.json()["error"]["code"]) in {
            (403, "insufficient_scope"), (429, "rate_limited")}, response.text


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_a_token(case: schemathesis.Case, gateway: Gateway) -> None:
    response = case.call_and_validate(base_url=gateway.admin_url, checks=CONFORMANCE)
    if _secured(case):
        assert response.status_code in {401, 429}, response.text
