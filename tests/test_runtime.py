"""The runtime's key source, wired: with `auth.jwks_url` the whole app — agent port and
admin port — starts without the IdP, is unready and refuses calls (401, audited) until a
fetch works, then takes tokens of a key the IdP added later on both ports, without a
restart. In-process, against an IdP endpoint on loopback (`tests.jwks.idp`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_apps
from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.web import RUNTIME
from tests.jwks.idp import IdpServer, idp_server, jwks
from tests.support import UPSTREAM_SECRET, FakeClock, Recorder, config, records

MISS_S = 30


@pytest.fixture(scope="module")
def key_b() -> DevKey:
    return DevKey.generate(kid="key-b")


@asynccontextmanager
async def ports(tmp_path: Path, dev_key: DevKey, upstream_url: str, idp: IdpServer,
                clock: FakeClock) -> AsyncIterator[tuple[TestClient[Any, Any],
                                                         TestClient[Any, Any]]]:
    settings = config(tmp_path, dev_key, upstream_url, auth={
        "issuer": DEV_ISSUER, "audience": DEV_AUDIENCE, "algorithms": ["RS256"],
        "jwks_url": idp.url, "jwks_miss_refresh_s": MISS_S})
    app, admin = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, clock)
    async with TestClient(TestServer(app)) as agent, TestClient(TestServer(admin)) as adm:
        yield agent, adm


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_unready_and_fail_closed_until_the_first_fetch(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
        clock: FakeClock) -> None:
    token = dev_key.token("svc-agent", tenant="acme", scopes=["echo:read"])
    async with idp_server(jwks(dev_key)) as idp:
        idp.status = 503
        async with ports(tmp_path, dev_key, recorder[1], idp, clock) as (agent, admin):
            ready = await admin.get("/readyz")
            assert ready.status == 503
            body = await ready.json()
            assert body["status"] == "unready"
            assert "auth.jwks_url" in body["keys"]
            assert "answered 503" in body["keys"]

            refused = await agent.get("/echo/items/1", headers=bearer(token))
            assert refused.status == 401
            error = (await refused.json())["error"]
            assert error["code"] == "unauthenticated"
            assert error["message"] == "no verification keys loaded yet"
            assert "invalid_token" in refused.headers["WWW-Authenticate"]
            assert isinstance(agent.server, TestServer)
            rt = agent.server.app[RUNTIME]
            [record] = [r for r in records(rt)
                        if r["decision_id"] == refused.headers["X-Request-Id"]]
            assert (record["code"], record["stage"]) == ("unauthenticated", "authenticate")
            assert recorder[0].seen == []

            idp.status = 200                  # the IdP is back
            clock.advance(MISS_S)             # and the last kid-miss fetch is long ago
            allowed = await agent.get("/echo/items/1", headers=bearer(token))
            assert allowed.status == 201   # the recording upstream answers 201
            ready = await admin.get("/readyz")
            assert ready.status == 200
            keys = (await ready.json())["keys"]
            assert keys["source"] == "jwks_url"
            assert keys["keys"] == 1
            assert keys["last_error"] is None


async def test_a_rotated_key_works_on_both_ports_without_a_restart(
        tmp_path: Path, dev_key: DevKey, key_b: DevKey, recorder: tuple[Recorder, str],
        clock: FakeClock) -> None:
    async with idp_server(jwks(dev_key)) as idp, \
            ports(tmp_path, dev_key, recorder[1], idp, clock) as (agent, admin):
        assert (await admin.get("/readyz")).status == 200
        idp.document = jwks(dev_key, key_b)   # the IdP adds key B and signs with it
        approver = key_b.token("alice", scopes=["toolgate:approve"])
        listed = await admin.get("/v1/approvals", headers=bearer(approver))
        assert listed.status == 200, await listed.text()
        assert (await listed.json())["approvals"] == []
        # The agent port shares the verifier: key B is known now, no fetch needed.
        hits = idp.hits
        agent_b = key_b.token("svc-agent", tenant="acme", scopes=["echo:read"])
        assert (await agent.get("/echo/items/2", headers=bearer(agent_b))).status == 201
        poll = await agent.get("/v1/approvals/apr_missing", headers=bearer(agent_b))
        assert poll.status == 404                # authenticated; no such call
        assert idp.hits == hits

        # A token naming a key the IdP never published: one fetch was allowed per
        # interval, and it was spent on key B; refused at once, on either port.
        stranger = DevKey.generate(kid="made-up").token("mallory", scopes=["toolgate:approve"])
        assert (await admin.get("/v1/approvals", headers=bearer(stranger))).status == 401
        assert (await agent.get("/echo/items/3", headers=bearer(stranger))).status == 401
        assert idp.hits == hits
        exposition = await (await admin.get("/metrics")).text()
        assert 'toolgate_jwks_fetches_total{result="ok",trigger="kid_miss"} 1.0' in exposition
        assert 'toolgate_jwks_kid_misses_total{outcome="rate_limited"}' in exposition


async def test_the_readyz_document_names_no_key_material(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
        clock: FakeClock) -> None:
    async with idp_server(jwks(dev_key)) as idp, \
            ports(tmp_path, dev_key, recorder[1], idp, clock) as (_agent, admin):
        raw = await (await admin.get("/readyz")).read()
    keys = orjson.loads(raw)["keys"]
    assert set(keys) == {"source", "keys", "revision", "age_s", "stale", "failures", "last_error"}
    assert dev_key.jwks["keys"][0]["n"][:20].encode() not in raw
