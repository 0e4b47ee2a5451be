"""A JWKS document from a URL: read into a key set with the file's pinning rules, or
refused whole — and no refusal quotes what the URL served."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.devtokens import DevKey
from gateway.jwks import JwksInvalid, parse_jwks
from gateway.jwks.document import MAX_KEYS

RS256 = frozenset({"RS256"})
CANARY = "jwks-canary-5d1e"


@pytest.fixture(scope="module")
def rsa_jwk() -> dict[str, Any]:
    return dict(DevKey.generate(kid="rsa-1").jwks["keys"][0])


def doc(*keys: dict[str, Any]) -> bytes:
    return orjson.dumps({"keys": list(keys)})


def ec_jwk(kid: str) -> dict[str, Any]:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public)), "kid": kid}


def test_a_set_is_read_with_each_key_pinned(rsa_jwk: dict[str, Any]) -> None:
    keyset, ignored = parse_jwks(doc(rsa_jwk, ec_jwk("ec-1")),
                                 frozenset({"RS256", "ES256"}))
    assert [(k.kid, k.algorithms) for k in keyset.keys] == [
        ("rsa-1", frozenset({"RS256"})), ("ec-1", frozenset({"ES256"}))]
    assert ignored == 0
    assert keyset.kid_required
    assert keyset.revision


def test_the_revision_names_the_keys_not_the_bytes(rsa_jwk: dict[str, Any]) -> None:
    other = ec_jwk("ec-1")
    first, _ = parse_jwks(doc(rsa_jwk, other), frozenset({"RS256", "ES256"}))
    reordered = json.dumps({"keys": [other, rsa_jwk]}, indent=4).encode()
    second, _ = parse_jwks(reordered, frozenset({"RS256", "ES256"}))
    assert first.revision == second.revision
    third, _ = parse_jwks(doc(rsa_jwk), frozenset({"RS256", "ES256"}))
    assert third.revision != first.revision


@pytest.mark.parametrize(("extra", "why"), [
    ({"use": "enc", "alg": "RSA-OAEP"}, "an encryption key"),
    ({"kid": ""}, "no kid: a token must name its key"),
    ({"alg": "ES256"}, "an alg that is not its type's"),
    ({"alg": "PS256"}, "an alg outside the allow-list"),
    ({"n": "AQAB"}, "material the library cannot read"),
    ({"kty": "ML-DSA"}, "a type this library does not know"),
])
def test_keys_that_cannot_verify_here_are_ignored(rsa_jwk: dict[str, Any],
                                                  extra: dict[str, Any], why: str) -> None:
    unusable = {**rsa_jwk, "kid": "other", **extra}
    keyset, ignored = parse_jwks(doc(unusable, rsa_jwk), RS256)
    assert [k.kid for k in keyset.keys] == ["rsa-1"], why
    assert ignored == 1


def test_a_key_without_a_kid_is_ignored_even_alone(rsa_jwk: dict[str, Any]) -> None:
    anonymous = {k: v for k, v in rsa_jwk.items() if k != "kid"}
    with pytest.raises(JwksInvalid, match="keys need a kid"):
        parse_jwks(doc(anonymous), RS256)


def test_an_hmac_secret_at_a_url_is_never_used() -> None:
    """SECURITY: a secret anyone can download signs anything."""
    secret = {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 64)
              .decode().rstrip("=")}
    with pytest.raises(JwksInvalid, match="oct keys are never used"):
        parse_jwks(doc(secret), frozenset({"HS256", "RS256"}))


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "no 'keys' list"),
    (b'{"keys": {"a": 1}}', "no 'keys' list"),
    (b'{"keys": [1]}', "key #1 is not a JSON object"),
    (b'{"keys": [{"kid": "a"}]}', "key #1 has no 'kty'"),
    (b'{"keys": [{"kty": "RSA", "kid": 5}]}', "key #1: 'kid' is not a string"),
    (b'{"keys": [{"kty": "RSA", "kid": "a", "alg": ["RS256"]}]}',
     "key #1: 'alg' is not a string"),
    (b'{"keys": [{"kty": "RSA", "kid": "a", "use": null}]}', "key #1: 'use' is not a string"),
    (b'{"keys": []}', "no key in it can verify tokens"),
    (b'{"keys": [1e999]}', "not JSON"),
])
def test_a_malformed_document_is_refused_whole(body: bytes, message: str) -> None:
    with pytest.raises(JwksInvalid, match=message):
        parse_jwks(body, RS256)


def test_one_malformed_entry_refuses_the_good_ones_too(rsa_jwk: dict[str, Any]) -> None:
    with pytest.raises(JwksInvalid, match="key #2"):
        parse_jwks(doc(rsa_jwk, {"kty": "RSA", "kid": 7}), RS256)


def test_two_keys_with_one_kid_are_refused(rsa_jwk: dict[str, Any]) -> None:
    twin = dict(DevKey.generate(kid="rsa-1").jwks["keys"][0])
    with pytest.raises(JwksInvalid, match="key #2: another key of the set has the same kid"):
        parse_jwks(doc(rsa_jwk, twin), RS256)


def weak_rsa_jwk(kid: str, **extra: str) -> dict[str, Any]:
    weak = 1024   # on purpose
    small = rsa.generate_private_key(public_exponent=65537, key_size=weak).public_key()
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small)), "kid": kid, **extra}


@pytest.mark.parametrize("allowed", [RS256, frozenset({"RS256", "ES256"})],
                         ids=["rsa", "rsa-and-ec"])
def test_a_weak_usable_key_refuses_the_set(rsa_jwk: dict[str, Any],
                                           allowed: frozenset[str]) -> None:
    """SECURITY: whatever good keys sit beside it."""
    with pytest.raises(JwksInvalid, match="key #3: an RSA key needs at least 2048 bits"):
        parse_jwks(doc(rsa_jwk, ec_jwk("ec-1"), weak_rsa_jwk("small")), allowed)


@pytest.mark.parametrize(("extra", "allowed"), [
    ({}, frozenset({"ES256"})),                        # no RSA algorithm is allowed
    ({"alg": "PS256"}, frozenset({"RS256", "ES256"})),  # its `alg` is not allowed
    ({"use": "enc"}, frozenset({"RS256", "ES256"})),    # not a signing key
], ids=["type-not-allowed", "alg-not-allowed", "encryption"])
def test_a_weak_key_no_allowed_algorithm_can_use_is_ignored(
        extra: dict[str, str], allowed: frozenset[str]) -> None:
    """A key the gateway could never verify with cannot forge anything here: an IdP's old
    1024-bit RSA key left in its set must not refuse the set of an ES256 gateway."""
    keyset, ignored = parse_jwks(doc(weak_rsa_jwk("small", **extra), ec_jwk("ec-1")), allowed)
    assert [(k.kid, k.algorithms) for k in keyset.keys] == [("ec-1", frozenset({"ES256"}))]
    assert ignored == 1


def test_too_many_keys_are_refused(rsa_jwk: dict[str, Any]) -> None:
    many = [{**rsa_jwk, "kid": f"k{i}"} for i in range(MAX_KEYS + 1)]
    with pytest.raises(JwksInvalid, match=f"at most {MAX_KEYS}"):
        parse_jwks(doc(*many), RS256)


@pytest.mark.parametrize("entry", [
    {"kty": "RSA", "kid": CANARY, "n": 5, "e": "AQAB"},
    {"kty": "RSA", "kid": "a", "n": CANARY, "e": "AQAB"},
    {"kty": CANARY, "kid": "a"},
    {"kty": "RSA", "kid": "a", "alg": CANARY},
])
def test_no_refusal_quotes_the_document(entry: dict[str, Any]) -> None:
    with pytest.raises(JwksInvalid) as info:
        parse_jwks(doc(entry), RS256)
    assert CANARY not in str(info.value)
