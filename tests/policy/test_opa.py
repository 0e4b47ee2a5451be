"""The `opa` engine against an OPA Data API on loopback: each kind of answer mapped onto the
contract (a decision, undefined, OPA's evaluation error, no answer), the revision OPA
names, one kept-alive connection, and the config that points at it.

The server here is a stand-in whose answers each test chooses, to reach every branch; the
real OPA engine behind the same API runs the end-to-end suite (tests/e2e/test_opa.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.core.decision import Action
from gateway.core.errors import LoadErrors, PolicyUnavailable
from gateway.devtokens import DevKey
from gateway.policy.opa import OpaEngine, bundle_revision, decision_path, server_address
from tests.support import config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DECISION = {"action": "allow", "reasons": ["green_tier: fine"]}
PROVENANCE = {"version": "1.0.0", "bundles": {"toolgate": {"revision": "git-3f2a"}}}


class Opa:
    """A Data API whose answer is `reply`; it keeps what it was asked, and on which
    connection."""

    def __init__(self) -> None:
        self.reply: Handler = self.decide
        self.asked: list[tuple[str, dict[str, str], Any]] = []
        self.connections: set[int] = set()

    async def decide(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": DECISION, "provenance": PROVENANCE})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.connections.add(id(request.transport))
        self.asked.append((request.path, dict(request.query), await request.json()))
        return await self.reply(request)


@pytest.fixture
async def opa() -> AsyncIterator[tuple[Opa, str]]:
    server = Opa()
    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", server.handle)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield server, str(test_server.make_url("")).rstrip("/")
    finally:
        await test_server.close()


@pytest.fixture
async def engine(opa: tuple[Opa, str]) -> AsyncIterator[OpaEngine]:
    built = OpaEngine(opa[1], "data.toolgate.decision", timeout_ms=300)
    yield built
    await built.close()


async def test_a_decision_with_the_revision_opa_names(opa: tuple[Opa, str],
                                                      engine: OpaEngine) -> None:
    server, _ = opa
    assert engine.revision == "opa:unknown"
    decision = await engine.evaluate({"tool": {"name": "get_order"}})
    assert (decision.action, decision.reasons, decision.revision) == (
        Action.ALLOW, ("green_tier: fine",), "git-3f2a")
    assert engine.revision == "git-3f2a"
    assert server.asked == [("/v1/data/toolgate/decision",
                             {"provenance": "true", "strict-builtin-errors": "true"},
                             {"input": {"tool": {"name": "get_order"}}})]


async def test_the_input_is_sent_as_the_embedded_engine_sees_it(opa: tuple[Opa, str],
                                                                engine: OpaEngine) -> None:
    await engine.evaluate({"principal": {"claims": {"score": float("nan")}}})
    assert opa[0].asked[0][2] == {"input": {"principal": {"claims": {"score": None}}}}


async def test_calls_share_one_kept_alive_connection(opa: tuple[Opa, str],
                                                     engine: OpaEngine) -> None:
    server, _ = opa
    for _ in range(5):
        await engine.evaluate({})
    assert len(server.asked) == 5 and len(server.connections) == 1


@pytest.mark.parametrize(("answer", "says"), [
    ({}, "data.toolgate.decision is undefined"),                  # no such rule or package
    ({"result": {"action": "maybe", "reasons": []}}, "no valid action"),   # wrong shape
    ({"result": "allow"}, "not an object"),
])
async def test_what_is_not_a_decision_is_a_policy_error(opa: tuple[Opa, str], engine: OpaEngine,
                                                        answer: dict[str, Any],
                                                        says: str) -> None:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer)
    opa[0].reply = reply
    decision = await engine.evaluate({})
    assert decision.action is Action.DENY and decision.reasons[0] == "policy_error"
    assert says in decision.reasons[1]


@pytest.mark.parametrize(("status", "message"), [
    (500, "eval_conflict_error: complete rules must not produce multiple outputs"),
    (500, "eval_builtin_error: to_number: invalid syntax"),   # strict-builtin-errors
    (400, "invalid input: unexpected character"),
])
async def test_an_error_from_opa_is_a_policy_error_with_its_message(
        opa: tuple[Opa, str], engine: OpaEngine, status: int, message: str) -> None:
    """OPA answered: an allow under fail_open must not come of it, so it is no 503."""
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.json_response({"code": "internal_error", "message": message},
                                 status=status)
    opa[0].reply = reply
    decision = await engine.evaluate({})
    assert decision.action is Action.DENY and decision.reasons[0] == "policy_error"
    assert decision.reasons[1] == (f"policy evaluation error (OPA): {message}" if status == 500
                                   else f"OPA refused the query (HTTP 400): {message}")


async def _late(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response({"result": DECISION})


async def _status(request: web.Request) -> web.StreamResponse:
    return web.json_response({"code": "unavailable"}, status=502)


async def _html(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>proxy error</html>", content_type="text/html")


async def _not_json(request: web.Request) -> web.StreamResponse:
    return web.Response(text="{not json", content_type="application/json")


async def _list(request: web.Request) -> web.StreamResponse:
    return web.json_response([DECISION])


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/data/elsewhere")


async def _missing(request: web.Request) -> web.StreamResponse:
    return web.json_response({}, status=404)


async def _deep(request: web.Request) -> web.StreamResponse:
    return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")


@pytest.mark.parametrize(("reply", "says"), [
    (_late, "did not answer within 300 ms"),
    (_status, "answered HTTP 502"),
    (_redirect, "answered HTTP 307"),     # not followed: the input goes nowhere else
    (_missing, "answered HTTP 404"),
    (_deep, "not a Data API response"),
    (_html, "not a Data API response"),
    (_not_json, "not a Data API response"),
    (_list, "not a Data API response"),
])
async def test_no_answer_from_opa_is_unavailable(opa: tuple[Opa, str], engine: OpaEngine,
                                                 reply: Handler, says: str) -> None:
    opa[0].reply = reply
    with pytest.raises(PolicyUnavailable, match=says):
        await engine.evaluate({})
    assert len(opa[0].asked) == 1, "no retry: the call's time is spent once"


async def test_opa_not_listening_is_unavailable() -> None:
    engine = OpaEngine("http://127.0.0.1:9", "data.toolgate.decision", timeout_ms=300)
    try:
        with pytest.raises(PolicyUnavailable, match="cannot be reached"):
            await engine.evaluate({})
    finally:
        await engine.close()


@pytest.mark.parametrize(("provenance", "revision"), [
    (PROVENANCE, "git-3f2a"),
    ({"bundles": {"b": {"revision": "2"}, "a": {"revision": "1"}}}, "a=1,b=2"),
    ({"bundles": {"toolgate": {}}}, "opa:unrevised"),
    ({"version": "1.0.0"}, "opa:unbundled"),
    ({"revision": "legacy-7"}, "legacy-7"),
    (None, None),
])
def test_the_revision_of_opas_bundles(provenance: Any, revision: str | None) -> None:
    assert bundle_revision(provenance) == revision


def test_the_decision_path_and_the_server_address() -> None:
    assert decision_path("data.toolgate.decision") == "toolgate/decision"
    assert server_address("http://127.0.0.1:8181") == (False, "127.0.0.1", 8181)
    assert server_address("https://opa.internal") == (True, "opa.internal", 443)
    for url in ("ftp://opa:1", "http://opa:8181/v1/data", "http://u:p@opa:8181",
                "http://:p@opa:8181", "http://opa:8181?x=1", "opa:8181", "http://[::1]:8181"):
        with pytest.raises(ValueError, match=r"policy.opa_url"):
            server_address(url)


def test_the_config_takes_engine_opa_and_refuses_a_bad_url(tmp_path: Path,
                                                            dev_key: DevKey) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      policy={"engine": "opa", "opa_url": "http://127.0.0.1:8181"})
    assert (settings.policy.engine, settings.policy.opa_url) == ("opa", "http://127.0.0.1:8181")
    with pytest.raises(LoadErrors) as info:
        config(tmp_path, dev_key, "http://127.0.0.1:9",
               policy={"engine": "opa", "opa_url": "http://127.0.0.1:8181/v1/data"})
    [error] = info.value.errors
    assert error.line is not None and "takes no path" in error.message
