"""The REST entrance through aiohttp's test server: route, body and arguments become a
tool call — or a JSON refusal with one decision record naming the entrance's step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import build_apps
from gateway.devtokens import DevKey
from gateway.web import RUNTIME
from tests.support import UPSTREAM_SECRET, FakeClock, Recorder, config


@pytest.fixture
async def client(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                 clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    settings = config(tmp_path, dev_key, recorder[1], limits={"max_body_bytes": 1000})
    app, _ = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, clock)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def decisions(client: TestClient[Any, Any], request_id: str) -> list[dict[str, Any]]:
    path = client.server.app[RUNTIME].settings.audit.file
    assert path is not None
    return [r for r in map(orjson.loads, path.read_bytes().splitlines())
            if r["decision_id"] == request_id and r["kind"] == "decision"]


async def refused(client: TestClient[Any, Any], method: str, path: str | URL, token: str,
                  status: int, code: str, stage: str, **kwargs: Any) -> dict[str, Any]:
    resp = await client.request(method, path, headers={"Authorization": f"Bearer {token}",
                                                       **kwargs.pop("headers", {})}, **kwargs)
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (status, code), body
    assert resp.headers["X-Toolgate-Decision"] == "deny"
    [record] = decisions(client, resp.headers["X-Request-Id"])
    assert record["stage"] == stage
    return record


async def test_an_undeclared_route_is_refused_unread(client: TestClient[Any, Any],
                                                    agent_token: str) -> None:
    record = await refused(client, "POST", "/admin/users", agent_token, 403,
                           "tool_not_allowed", "route", data=b"x" * 5000)
    assert record["tool"] is None


@pytest.mark.parametrize("path", ["/echo/items/%2e%2e", "/echo/items/%2E",
                                  "/echo/items/a%2Fb", "/echo/items/a%5Cb"])
async def test_a_parameter_that_is_not_one_segment(client: TestClient[Any, Any],
                                                  agent_token: str, path: str) -> None:
    await refused(client, "GET", URL(path, encoded=True), agent_token, 400,
                  "invalid_arguments", "route")


async def test_body_refusals_name_the_tool(client: TestClient[Any, Any],
                                          agent_token: str) -> None:
    record = await refused(client, "POST", "/echo/items", agent_token, 413, "body_too_large",
                           "parse", data=b'{"name": "' + b"x" * 2000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert record["tool"] == "echo_post"
    await refused(client, "POST", "/echo/items", agent_token, 415, "unsupported_media_type",
                  "parse", data=b'{"name": "a", "count": 1}',
                  headers={"Content-Type": "text/plain"})
    await refused(client, "POST", "/echo/items", agent_token, 400, "invalid_json", "parse",
                  data=b'{"name": "a", "name": "b"}',
                  headers={"Content-Type": "application/json"})


async def test_a_name_given_twice_is_refused(client: TestClient[Any, Any],
                                            agent_token: str) -> None:
    await refused(client, "GET", "/echo/items/abc?item_id=other", agent_token, 400,
                  "invalid_arguments", "route")
    await refused(client, "POST", "/echo/items?name=q", agent_token, 400, "invalid_arguments",
                  "route", json={"name": "a", "count": 1})


async def test_a_call_goes_through(client: TestClient[Any, Any], agent_token: str,
                                  recorder: tuple[Recorder, str]) -> None:
    resp = await client.get("/echo/items/it%C3%A9m?q=a%20b",
                            headers={"Authorization": f"Bearer {agent_token}"})
    assert (resp.status, resp.headers["X-Toolgate-Decision"]) == (201, "allow")
    assert recorder[0].seen[-1].raw_path == "/v1/items/it%C3%A9m?q=a%20b"
    [record] = decisions(client, resp.headers["X-Request-Id"])
    assert record["args"] == {"item_id": "itém", "q": "a b"}


@pytest.mark.parametrize(("content_type", "status", "code"), [
    ("application/json; charset=utf-8; charset=latin-1", 400, "invalid_json"),
    ("application/json; charset=latin-1", 400, "invalid_json"),
    ("application/json; charset=utf-8; boundary=x", 415, "unsupported_media_type"),
    ("application/json; x-read-as=form", 415, "unsupported_media_type"),
    ("application/x-www-form-urlencoded", 415, "unsupported_media_type"),
])
async def test_a_json_media_type_takes_only_a_utf8_charset(
        client: TestClient[Any, Any], agent_token: str, recorder: tuple[Recorder, str],
        content_type: str, status: int, code: str) -> None:
    before = len(recorder[0].seen)
    await refused(client, "POST", "/echo/items", agent_token, status, code, "parse",
                  data=b'{"name": "a", "count": 1}', headers={"Content-Type": content_type})
    assert len(recorder[0].seen) == before


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=UTF-8", 'application/json;charset="utf-8"',
    "application/merge-patch+json", "Application/JSON ;"])
async def test_json_media_types_that_pass(client: TestClient[Any, Any], agent_token: str,
                                          content_type: str) -> None:
    resp = await client.post("/echo/items", data=b'{"name": "a", "count": 1}',
                             headers={"Authorization": f"Bearer {agent_token}",
                                      "Content-Type": content_type})
    assert resp.status == 201, await resp.text()
