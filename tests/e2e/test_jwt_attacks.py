"""RFC 8725 attacks on the agent token, each refused with 401 (or 403 for a missing scope)
by the real gateway, each with one decision record at stage `authenticate`/`scopes`, and
none reaching the upstream. At the end, the token cache with the clock in the test's hands:
what only a clock that steps back can show."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.auth import TokenVerifier
from gateway.config import AuthSettings
from gateway.core.errors import Unauthenticated
from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.keys import load_keys
from tests.e2e.harness import Gateway, Reply, Upstream

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


def assert_unauthenticated(gateway: Gateway, reply: Reply) -> None:
    assert reply.status == 401, reply.raw
    assert reply.code == "unauthenticated"
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    [decision] = [r for r in gateway.records_for(reply.request_id) if r["kind"] == "decision"]
    assert decision["stage"] == "authenticate"
    assert decision["principal"] is None


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_unauthenticated(gateway: Gateway, upstream: Upstream, dev_key: DevKey,
                                   attack: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("GET", PATH, token=ATTACKS[attack](dev_key))
    assert_unauthenticated(gateway, reply)
    assert len(upstream.seen) == before


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


# ---- a key the token brings with it (THREAT_MODEL T3) --------------------------------------

@pytest.fixture(scope="module")
def attacker() -> DevKey:
    """The attacker's own key pair: nothing the gateway was configured with."""
    return DevKey.generate(kid="attacker-key")


def attacker_certificate(attacker: DevKey) -> str:
    """A self-signed certificate for the attacker's key, base64 DER as `x5c` carries it."""
    private = serialization.load_pem_private_key(attacker.private_pem, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(private, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def key_header(kind: str, upstream: Upstream, attacker: DevKey) -> dict[str, Any]:
    """RFC 7515 §4.1.2-4.1.6: a header that names or carries the key to verify with. The
    URLs point at the recording upstream, so a fetch of them would be seen."""
    if kind == "jwk":
        return {"jwk": dict(attacker.jwks["keys"][0])}
    if kind == "x5c":
        return {"x5c": [attacker_certificate(attacker)]}
    return {kind: f"{upstream.url}/attacker/{kind}"}


@pytest.mark.parametrize("kid", ["the gateway's kid", "the attacker's kid", "no kid"])
@pytest.mark.parametrize("kind", ["jwk", "jku", "x5u", "x5c"])
def test_a_key_the_token_brings_is_never_used(gateway: Gateway, upstream: Upstream,
                                              dev_key: DevKey, attacker: DevKey, kind: str,
                                              kid: str) -> None:
    """Signed with the attacker's own key, which the header carries or points at: keys come
    from the configured JWKS only, so the token is 401, and nothing is fetched."""
    headers = key_header(kind, upstream, attacker)
    if kid != "no kid":
        headers["kid"] = dev_key.kid if kid == "the gateway's kid" else attacker.kid
    token = jwt.encode(claims(), attacker.private_pem, algorithm="RS256", headers=headers)
    assert jwt.get_unverified_header(token)[kind] == headers[kind]
    before = len(upstream.seen)
    assert_unauthenticated(gateway, gateway.call("GET", PATH, token=token))
    assert upstream.seen[before:] == [], "nothing reached the upstream, nor was fetched"


def test_the_same_token_signed_by_the_gateway_s_key_passes(
        gateway: Gateway, upstream: Upstream, dev_key: DevKey, attacker: DevKey) -> None:
    """The control: with the configured key, the headers above change nothing."""
    headers = {**key_header("jwk", upstream, attacker), **key_header("jku", upstream, attacker),
               "kid": dev_key.kid}
    token = jwt.encode(claims(), dev_key.private_pem, algorithm="RS256", headers=headers)
    assert gateway.call("GET", PATH, token=token).status == 200


# ---- not before its nbf (THREAT_MODEL T6) --------------------------------------------------

def test_a_token_before_its_nbf_is_refused_on_every_call(gateway: Gateway, upstream: Upstream,
                                                         dev_key: DevKey) -> None:
    """Beyond the leeway (5 s here), a token is not yet valid however often it is sent, and
    whatever the cache holds for another token of the same principal."""
    now = int(time.time())
    valid = signed(dev_key, nbf=now - 1)
    early = signed(dev_key, nbf=now + 120)
    assert [gateway.call("GET", PATH, token=valid).status for _ in range(2)] == [200, 200]
    before = len(upstream.seen)
    for _ in range(3):
        reply = gateway.call("GET", PATH, token=early)
        assert_unauthenticated(gateway, reply)
        assert 'error_description="token not yet valid"' in reply.headers["WWW-Authenticate"]
    assert len(upstream.seen) == before


NBF = 1_900_000_000  # a fixed time, so the test sets the clock


def verifier_for(directory: Path, key: DevKey) -> TokenVerifier:
    key.save(directory)
    settings = AuthSettings(DEV_ISSUER, DEV_AUDIENCE, ("RS256",), jwks_file=directory /
                            "jwks.json", leeway_s=30)
    return TokenVerifier(settings, load_keys(settings, {}))


def nbf_token(key: DevKey) -> str:
    return jwt.encode({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "svc-agent",
                       "nbf": NBF, "exp": NBF + 600}, key.private_pem, algorithm="RS256",
                      headers={"kid": key.kid})


def test_a_token_accepted_within_the_leeway_before_its_nbf_is_not_cached(
        tmp_path: Path, dev_key: DevKey) -> None:
    """Accepted 10 s before its nbf (the leeway is 30 s), the token is not cached: when the
    clock then steps back 21 s, it is checked again, and refused."""
    verifier = verifier_for(tmp_path, dev_key)
    token = nbf_token(dev_key)
    assert verifier.verify(token, now=NBF - 10).sub == "svc-agent"
    with pytest.raises(Unauthenticated, match="token not yet valid"):
        verifier.verify(token, now=NBF - 31)


def test_the_cache_never_accepts_a_token_a_fresh_verification_refuses(
        tmp_path: Path, dev_key: DevKey) -> None:
    verifier = verifier_for(tmp_path, dev_key)
    token = nbf_token(dev_key)
    assert verifier.verify(token, now=NBF + 1).sub == "svc-agent"   # cached
    with pytest.raises(Unauthenticated, match="token not yet valid"):
        verifier.verify(token, now=NBF - 31)   # the wall clock stepped back a minute
