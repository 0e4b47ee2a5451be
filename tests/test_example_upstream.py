"""The example upstream: it answers every shipped tool, only with the credential the shipped
toolgate.yaml makes the gateway send, and its request log never shows a secret."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.cli.example import DEFAULT_LISTEN
from gateway.example_upstream import (
    CREDENTIAL_SOURCES,
    Credentials,
    CredentialsMissing,
    make_app,
)

ENV = {"CRM_TOKEN": "crm-secret-1", "BILLING_TOKEN": "billing-secret-2",
       "HR_TOKEN": "hr-secret-3"}
HEADERS = {"crm": {"Authorization": "Bearer crm-secret-1"},
           "billing": {"Authorization": "Bearer billing-secret-2"},
           "hr": {"X-Api-Key": "hr-secret-3"}}


def shipped_specs(repo_root: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text(encoding="utf-8"))
            for p in sorted((repo_root / "tool_specs").glob("*.yaml"))]


def test_the_shipped_config_sends_what_the_example_upstream_checks(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / "toolgate.yaml").read_text(encoding="utf-8"))
    assert set(config["upstreams"]) == set(CREDENTIAL_SOURCES)
    for name, upstream in config["upstreams"].items():
        source = CREDENTIAL_SOURCES[name]
        assert upstream["url"] == f"http://{DEFAULT_LISTEN}", name
        assert upstream["credential"] == {"header": source.header, "env": source.env,
                                          **({"prefix": source.prefix} if source.prefix
                                             else {})}, name


def test_credentials_come_from_the_gateways_variables() -> None:
    creds = Credentials.from_env(ENV)
    assert creds.environ() == ENV
    with pytest.raises(CredentialsMissing, match=r"^CRM_TOKEN, HR_TOKEN not set"):
        Credentials.from_env({"CRM_TOKEN": "", "BILLING_TOKEN": "b"})
    generated = Credentials.generate()
    assert len(set(generated.environ().values())) == 3
    assert "secret" not in repr(creds) and generated.crm not in repr(generated)


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_it_answers_every_shipped_tool_only_with_its_credential(
        aiohttp_client: Any, repo_root: Path) -> None:
    client = await aiohttp_client(make_app(Credentials.from_env(ENV)))
    body = {"tenant_id": "acme", "order_id": "o1", "amount": 20, "currency": "USD",
            "note": "n", "iban": "DE89370400440532013000"}
    specs = shipped_specs(repo_root)
    assert len(specs) == 5
    for spec in specs:
        method, path = spec["route"]["method"], _fill(spec["forward"]["path"])
        api = spec["upstream"]
        json_body = None if method == "GET" else body
        ok = await client.request(method, path, json=json_body, headers=HEADERS[api])
        assert ok.status in (200, 201), (spec["name"], await ok.text())
        for other, headers in HEADERS.items():
            if other != api:
                wrong = await client.request(method, path, json=json_body, headers=headers)
                assert wrong.status == 401, (spec["name"], other)
        # The agent's own token is not the upstream's credential.
        agent = await client.request(method, path, json=json_body,
                                     headers={"Authorization": "Bearer eyJagent.token.x"})
        assert agent.status == 401
        assert "credential" in (await agent.json())["error"]


async def test_the_request_log_names_the_call_never_a_secret(aiohttp_client: Any) -> None:
    out = io.StringIO()
    client = await aiohttp_client(make_app(Credentials.from_env(ENV), log_to=out))
    await client.post("/v1/refunds", json={"amount": 5, "currency": "USD"},
                      headers={**HEADERS["billing"], "X-Request-Id": "req_1",
                               "Idempotency-Key": "k-1"})
    await client.get("/v1/orders/o1", headers={"Authorization": "Bearer wrong-secret"})
    await client.get("/nowhere")
    assert out.getvalue().splitlines() == [
        "POST /v1/refunds -> 201  (X-Request-Id: req_1; Idempotency-Key: k-1)",
        "GET /v1/orders/o1 -> 401",
        "GET /nowhere -> 404",
    ]
    assert not any(s in out.getvalue() for s in (*ENV.values(), "wrong-secret"))


async def test_a_handler_failure_is_logged_as_500(aiohttp_client: Any) -> None:
    out = io.StringIO()
    client = await aiohttp_client(make_app(Credentials.from_env(ENV), log_to=out))
    # A refund without an amount: the example API has no validation of its own (the
    # gateway's schema check stands in front of it).
    resp = await client.post("/v1/refunds", json={}, headers=HEADERS["billing"])
    assert resp.status == web.HTTPInternalServerError.status_code
    assert out.getvalue() == "POST /v1/refunds -> 500\n"
