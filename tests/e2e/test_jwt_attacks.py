"""RFC 8725 attacks on the agent token, each refused with 401 (or 403 for a missing scope)
by the real gateway, each with one decision record at stage `authenticate`/`scopes`, and
none reaching the upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream

PATH = "/orders/ord_1234?tenant_id=acme"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"iss": "https://idp.example.com", "aud": "toolgate",
                               "sub": "mallory", "tenant": "acme", "scope": "orders:read",
                               "iat": now, "nbf": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def unsigned(header: dict[str, object], payload: dict[str, object], sig: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()),
                     b64(sig)])


def alg_none(key: DevKey) -> str:
    return unsigned({"alg": "none", "typ": "JWT"}, claims())


def hs256_with_public_key(key: DevKey) -> str:
    """The classic confusion: HMAC keyed with the RSA public key the gateway trusts."""
    private = serialization.load_pem_private_key(key.private_pem, None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64(json.dumps(claims()).encode())
    sig = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def signed(key: DevKey, kid: str | None = None, **overrides: object) -> str:
    return jwt.encode(claims(**overrides), key.private_pem, algorithm="RS256",
                      headers={"kid": kid or key.kid})


def tampered(key: DevKey) -> str:
    header, _, sig = signed(key).split(".")
    payload = b64(json.dumps(claims(sub="admin", tenant="globex")).encode())
    return f"{header}.{payload}.{sig}"


def other_key_same_kid(key: DevKey) -> str:
    return signed(DevKey.generate(kid=key.kid))


ATTACKS: dict[str, Callable[[DevKey], str]] = {
    "alg none": alg_none,
    "HS256 signed with the RSA public key": hs256_with_public_key,
    "expired": lambda k: signed(k, exp=int(time.time()) - 120),
    "not yet valid": lambda k: signed(k, nbf=int(time.time()) + 120),
    "wrong issuer": lambda k: signed(k, iss="https://evil.example.com"),
    "wrong audience": lambda k: signed(k, aud="someone-else"),
    "tampered payload": tampered,
    "unknown kid": lambda k: signed(k, kid="no-such-key"),
    "signed by another key with the same kid": other_key_same_kid,
    "no exp": lambda k: signed(k, exp=None),
    "garbage": lambda k: "not.a.jwt",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_unauthenticated(gateway: Gateway, upstream: Upstream, dev_key: DevKey,
                                   attack: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("GET", PATH, token=ATTACKS[attack](dev_key))
    assert reply.status == 401, reply.raw
    assert reply.code == "unauthenticated"
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    assert len(upstream.seen) == before
    [decision] = [r for r in gateway.records_for(reply.request_id) if r["kind"] == "decision"]
    assert decision["stage"] == "authenticate"
    assert decision["principal"] is None


def test_valid_token_passes(gateway: Gateway, dev_key: DevKey) -> None:
    """The control: the same construction with nothing wrong is accepted."""
    reply = gateway.call("GET", PATH, token=signed(dev_key))
    assert reply.status == 200


def test_missing_scope_is_403(gateway: Gateway, dev_key: DevKey, upstream: Upstream) -> None:
    before = len(upstream.seen)
    reply = gateway.call("GET", PATH, token=signed(dev_key, scope="crm:read"))
    assert reply.status == 403
    assert reply.code == "insufficient_scope"
    assert len(upstream.seen) == before


def test_scp_list_claim_is_accepted(gateway: Gateway, dev_key: DevKey) -> None:
    reply = gateway.call("GET", PATH, token=signed(dev_key, scope=None, scp=["orders:read"]))
    assert reply.status == 200
