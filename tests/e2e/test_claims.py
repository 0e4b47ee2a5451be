"""The identity a call runs as is what the token signed, or nothing: a claim that is present
must be usable as it is (else 401, naming it), and the unsigned run id header must be text
(else 400) — against a real `toolgate serve`, each refusal with one decision record at stage
`authenticate` and nothing sent upstream."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Reply, Upstream

PATH = "/echo/items/a"


def token(key: DevKey, **claims: Any) -> str:
    """A valid token for the echo tools, with `claims` replacing or adding to its own
    (None is a JSON null, not an absent claim)."""
    now = int(time.time())
    payload = {"iss": "https://idp.example.com", "aud": "toolgate", "sub": "svc-agent",
               "agent": "support-bot", "tenant": "acme", "scope": "echo:read", "iat": now,
               "nbf": now, "exp": now + 600, **claims}
    return jwt.encode(payload, key.private_pem, algorithm="RS256", headers={"kid": key.kid})


def refused(gateway: Gateway, upstream: Upstream, reply: Reply, status: int,
            code: str) -> dict[str, Any]:
    assert (reply.status, reply.code) == (status, code), reply.raw
    [record] = gateway.records_for(reply.request_id)
    assert (record["kind"], record["stage"], record["code"]) == (
        "decision", "authenticate", code)
    assert reply.request_id not in [s.headers.get("X-Request-Id") for s in upstream.seen]
    return record


@pytest.mark.parametrize("run", ["run-\xff", "r" * 129, ""], ids=["not UTF-8", "too long",
                                                                  "empty"])
def test_a_run_id_header_that_is_not_a_run_id_is_400_and_recorded(
        gateway: Gateway, upstream: Upstream, dev_key: DevKey, run: str) -> None:
    """`\\xff` was a lone surrogate no record could hold: a 500 and no decision record."""
    reply = gateway.call("GET", PATH, token=token(dev_key), headers={"X-Agent-Run-Id": run})
    record = refused(gateway, upstream, reply, 400, "invalid_arguments")
    assert record["principal"] == {"sub": "svc-agent", "agent": "support-bot",
                                   "tenant": "acme"}
    assert record["run_id"] is None


def test_a_run_id_header_that_is_a_run_id_is_the_run(gateway: Gateway,
                                                      dev_key: DevKey) -> None:
    reply = gateway.call("GET", PATH, token=token(dev_key),
                         headers={"X-Agent-Run-Id": "r" * 128})
    assert reply.status == 200, reply.raw
    [record] = [r for r in gateway.records_for(reply.request_id) if r["kind"] == "decision"]
    assert record["run_id"] == "r" * 128


@pytest.mark.parametrize(("claim", "value"), [
    ("tenant", 5), ("tenant", None), ("tenant", ["acme"]), ("tenant", ""),
    ("agent", 5), ("sub", ""), ("roles", "admin"), ("scope", ["echo:read"]),
    ("iat", "now"), ("iat", True)], ids=repr)
def test_a_claim_of_the_wrong_type_is_401_never_dropped(
        gateway: Gateway, upstream: Upstream, dev_key: DevKey, claim: str,
        value: object) -> None:
    """`tenant: 5` was dropped: the call ran with no tenant, on the default budgets."""
    reply = gateway.call("GET", PATH, token=token(dev_key, **{claim: value}))
    record = refused(gateway, upstream, reply, 401, "unauthenticated")
    assert record["principal"] is None
    assert f'error_description="malformed {claim} claim"' in reply.headers["WWW-Authenticate"]


def test_a_null_run_id_claim_is_never_replaced_by_the_header(
        gateway: Gateway, upstream: Upstream, dev_key: DevKey) -> None:
    reply = gateway.call("GET", PATH, token=token(dev_key, run_id=None),
                         headers={"X-Agent-Run-Id": "a-fresh-budget"})
    refused(gateway, upstream, reply, 401, "unauthenticated")
    assert 'error_description="malformed run_id claim"' in reply.headers["WWW-Authenticate"]
