"""Token verification: real RS256 keys in a JWKS file, and the RFC 8725 attacks by hand."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.auth import (
    KeyMiss,
    Principal,
    TokenVerifier,
    authenticate_bearer,
    principal_from_claims,
)
from gateway.config import AuthSettings
from gateway.core.errors import Unauthenticated
from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.keys import KeyConfigError, StaticKeys, load_keys

Verifier = Callable[..., TokenVerifier]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _unb64json(part: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "svc-agent", "iat": now,
            "exp": now + 600, **extra}


def _sign(key: DevKey, payload: dict[str, Any], kid: str | None = "") -> str:
    headers = {"kid": key.kid if kid == "" else kid} if kid is not None else {}
    return jwt.encode(payload, key.private_pem, algorithm="RS256", headers=headers or None)


def _public_pem(key: DevKey) -> bytes:
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _settings(**changes: Any) -> AuthSettings:
    fields: dict[str, Any] = {"issuer": DEV_ISSUER, "audience": DEV_AUDIENCE,
                              "algorithms": ("RS256",), "leeway_s": 30}
    fields.update(changes)
    return AuthSettings(**fields)


@pytest.fixture
def jwks_file(tmp_path: Path, dev_key: DevKey) -> Path:
    path = tmp_path / "keys" / "jwks.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dev_key.jwks), encoding="utf-8")
    return path


@pytest.fixture
def make_verifier(jwks_file: Path) -> Verifier:
    def make(**changes: Any) -> TokenVerifier:
        settings = _settings(jwks_file=jwks_file, **changes)
        return TokenVerifier(settings, load_keys(settings, {}))
    return make


@pytest.fixture
def verifier(make_verifier: Verifier) -> TokenVerifier:
    return make_verifier()


def _short(value: object) -> str:
    """A test id for a value that may be a thousand characters long."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} chars)"


def _rejects(verifier: TokenVerifier, token: str, description: str | None = None,
             now: float | None = None) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, now=now)
    error = info.value
    assert error.status == 401
    challenge = error.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="toolgate"')
    assert 'error="invalid_token"' in challenge
    if description is not None:
        assert error.message == description
        assert f'error_description="{description}"' in challenge
    return error


# ---- Valid tokens --------------------------------------------------------------------

def test_valid_token_yields_principal(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", scopes=["billing:refund", "orders:read"], tenant="acme",
                          agent="support-bot", roles=["support", "lead"], run_id="run-7")
    principal = verifier.verify(token)
    assert isinstance(principal, Principal)
    assert principal.sub == "svc-agent"
    assert principal.scopes == frozenset({"billing:refund", "orders:read"})
    assert principal.tenant == "acme"
    assert principal.agent == "support-bot"
    assert principal.roles == ("support", "lead")
    assert principal.run_id == "run-7"
    assert principal.claims["iss"] == DEV_ISSUER
    assert principal.as_audit() == {"sub": "svc-agent", "agent": "support-bot", "tenant": "acme"}
    assert principal.as_input()["scopes"] == ["billing:refund", "orders:read"]


def test_scopes_from_scp_list(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", scp=["billing:refund", "orders:read"])
    principal = verifier.verify(token)
    assert principal.scopes == frozenset({"billing:refund", "orders:read"})


def test_scopes_from_scp_string(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", scp="billing:refund orders:read")
    assert verifier.verify(token).scopes == frozenset({"billing:refund", "orders:read"})


def test_scopes_from_scope_and_scp_are_combined(verifier: TokenVerifier,
                                                dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", scopes=["a", "b"], scp=["c"])
    assert verifier.verify(token).scopes == frozenset({"a", "b", "c"})


@pytest.mark.parametrize("run_id", [None, 7, 7.5, True, ["run-1"], {"id": "run-1"}, "",
                                    "r" * 129, "run\n1", "run\x7f", "run\u00a01"], ids=_short)
def test_a_malformed_run_id_claim_is_401(verifier: TokenVerifier, dev_key: DevKey,
                                         run_id: object) -> None:
    """A signed run id the gateway cannot use is refused, never silently replaced by the
    unsigned X-Agent-Run-Id header (which would give the agent a fresh budget). `null` too:
    it was read as no claim, so the header chose the run."""
    _rejects(verifier, _sign(dev_key, _claims(run_id=run_id)), "malformed run_id claim")


def test_optional_claims_absent(verifier: TokenVerifier, dev_key: DevKey) -> None:
    principal = verifier.verify(_sign(dev_key, _claims()))
    assert principal.tenant is None
    assert principal.agent is None
    assert principal.roles == ()
    assert principal.run_id is None
    assert principal.scopes == frozenset()


NAMES_BEYOND_BOUNDS = [None, 5, 5.0, True, ["acme"], {"id": "acme"}, "", "a" * 1025, "ac\nme",
                       "ac\tme", "ac\u00a0me", "ac\u200bme"]


@pytest.mark.parametrize(("claim", "value"), [
    *[("sub", v) for v in [5, True, ["svc"], {"id": "svc"}, "", "s" * 1025, "svc\n1"]],
    *[("tenant", v) for v in [*NAMES_BEYOND_BOUNDS, "ac me"]],
    *[("agent", v) for v in [*NAMES_BEYOND_BOUNDS, "support bot"]],
    *[("roles", v) for v in [None, "admin", 5, {"admin": True}, ["admin", 5], ["admin", None],
                             [["admin"]]]],
    *[("scope", v) for v in [None, 5, True, ["orders:read"], {"orders:read": True}]],
    *[("scp", v) for v in [None, 5, True, {"orders:read": True}, ["orders:read", 7],
                           ["orders:read", None], [["orders:read"]]]],
], ids=_short)
def test_a_claim_present_but_not_usable_is_401(verifier: TokenVerifier, dev_key: DevKey,
                                               claim: str, value: object) -> None:
    """A present claim is the IdP's word: one of the wrong type or beyond its bounds is
    refused, naming it, never dropped. `tenant: 5` was dropped: the call ran with no tenant,
    on the default budgets, in runs shared with every tenant-less token."""
    _rejects(verifier, _sign(dev_key, _claims(**{claim: value})), f"malformed {claim} claim")


def test_a_claim_at_its_bounds_is_usable(verifier: TokenVerifier, dev_key: DevKey) -> None:
    sub = "system:serviceaccount:ns:a bot "
    token = _sign(dev_key, _claims(sub=sub + "s" * (1024 - len(sub)),
                                   tenant="t" * 1024, agent="é" * 1024, run_id="run 1" * 25,
                                   roles=[], scope="", scp=[]))
    principal = verifier.verify(token)
    assert (len(principal.sub), principal.tenant, principal.agent, principal.run_id) == (
        1024, "t" * 1024, "é" * 1024, "run 1" * 25)
    assert (principal.roles, principal.scopes) == ((), frozenset())


def test_a_principal_needs_a_subject() -> None:
    with pytest.raises(Unauthenticated, match="missing claim sub"):
        principal_from_claims({"tenant": "acme"})


def test_token_without_kid_uses_the_only_key(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = _sign(dev_key, _claims(), kid=None)
    assert "kid" not in jwt.get_unverified_header(token)
    assert verifier.verify(token).sub == "svc-agent"


# ---- Attacks and invalid tokens --------------------------------------------------------

def test_alg_none_rejected(verifier: TokenVerifier) -> None:
    token = f"{_b64json({'alg': 'none', 'typ': 'JWT'})}.{_b64json(_claims())}."
    _rejects(verifier, token, "token algorithm not allowed")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_spellings_rejected(alg: str, dev_key: DevKey,
                                    verifier: TokenVerifier) -> None:
    header = {"alg": alg, "kid": dev_key.kid}
    token = f"{_b64json(header)}.{_b64json(_claims())}."
    _rejects(verifier, token)


def _hs256_with_public_pem(key: DevKey, kid: str | None) -> str:
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64json(header)}.{_b64json(_claims())}"
    signature = hmac.new(_public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def test_hs256_with_public_key_as_secret_rejected(verifier: TokenVerifier,
                                                  dev_key: DevKey) -> None:
    _rejects(verifier, _hs256_with_public_pem(dev_key, dev_key.kid),
             "token algorithm not allowed")


def test_hs256_with_public_key_rejected_when_hs256_is_allowed(make_verifier: Verifier,
                                                              dev_key: DevKey) -> None:
    """Allowing HS256 in config must not let an RSA key act as an HMAC secret."""
    verifier = make_verifier(algorithms=("RS256", "HS256"))
    _rejects(verifier, _hs256_with_public_pem(dev_key, dev_key.kid),
             "token algorithm does not match its key")


def test_hs256_with_public_key_rejected_for_pem_key(tmp_path: Path, dev_key: DevKey) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(_public_pem(dev_key))
    settings = _settings(public_key_file=pem, algorithms=("RS256", "HS256"))
    verifier = TokenVerifier(settings, load_keys(settings, {}))
    _rejects(verifier, _hs256_with_public_pem(dev_key, None),
             "token algorithm does not match its key")


def test_expired_token_rejected(make_verifier: Verifier, dev_key: DevKey) -> None:
    verifier = make_verifier(leeway_s=0)
    _rejects(verifier, dev_key.token("svc-agent", ttl_s=-60), "token expired")


def test_expired_beyond_leeway_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    _rejects(verifier, dev_key.token("svc-agent", ttl_s=-300), "token expired")


def test_nbf_in_the_future_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", nbf=int(time.time()) + 300)
    _rejects(verifier, token, "token not yet valid")


def test_wrong_issuer_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", issuer="https://evil.example.com")
    _rejects(verifier, token, "wrong issuer")


def test_wrong_audience_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    _rejects(verifier, dev_key.token("svc-agent", audience="someone-else"), "wrong audience")


def test_tampered_payload_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", scopes=["orders:read"], tenant="acme")
    header, payload, signature = token.split(".")
    claims = _unb64json(payload)
    claims["scope"] = "orders:read billing:refund"
    claims["tenant"] = "globex"
    forged = f"{header}.{_b64json(claims)}.{signature}"
    assert forged != token
    _rejects(verifier, forged, "invalid signature")


def test_unknown_kid_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    _rejects(verifier, _sign(dev_key, _claims(), kid="some-other-key"), "unknown key id")


def test_non_string_kid_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    # PyJWT refuses to sign this header, so sign by hand with the genuine key.
    private = serialization.load_pem_private_key(dev_key.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    signing_input = f"{_b64json({'alg': 'RS256', 'kid': [dev_key.kid]})}.{_b64json(_claims())}"
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    _rejects(verifier, f"{signing_input}.{_b64(signature)}")


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_missing_required_claim_rejected(verifier: TokenVerifier, dev_key: DevKey,
                                         claim: str) -> None:
    claims = _claims()
    del claims[claim]
    _rejects(verifier, _sign(dev_key, claims), f"missing claim {claim}")


def test_other_key_with_same_kid_rejected(verifier: TokenVerifier, dev_key: DevKey) -> None:
    impostor = DevKey.generate(kid=dev_key.kid)
    token = impostor.token("svc-agent", scopes=["billing:refund"])
    assert jwt.get_unverified_header(token)["kid"] == dev_key.kid
    _rejects(verifier, token, "invalid signature")


@pytest.mark.parametrize("token", [
    "", "garbage", "a.b", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30",
], ids=repr)
def test_malformed_tokens_rejected(verifier: TokenVerifier, token: str) -> None:
    _rejects(verifier, token)


@pytest.mark.parametrize("tail", ["\udcff", "\u00e9", "\x00"], ids=repr)
def test_a_token_that_is_not_ascii_is_malformed(verifier: TokenVerifier, dev_key: DevKey,
                                                tail: str) -> None:
    """`Bearer <token>\\xff` arrives as a lone surrogate, which the library cannot encode:
    it was a 500 on both ports."""
    _rejects(verifier, tail, "malformed token")
    _rejects(verifier, dev_key.token("svc-agent") + tail, "malformed token")


# ---- Leeway --------------------------------------------------------------------------

def test_expired_within_leeway_passes(make_verifier: Verifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", ttl_s=-10)
    assert make_verifier(leeway_s=30).verify(token).sub == "svc-agent"
    _rejects(make_verifier(leeway_s=0), token, "token expired")


def test_nbf_within_leeway_passes(make_verifier: Verifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", nbf=int(time.time()) + 10)
    assert make_verifier(leeway_s=30).verify(token).sub == "svc-agent"
    _rejects(make_verifier(leeway_s=0), token, "token not yet valid")


# ---- Cache ---------------------------------------------------------------------------

def _exp(token: str) -> int:
    return int(_unb64json(token.split(".")[1])["exp"])


def test_cache_returns_the_cached_principal(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", ttl_s=600)
    now = time.time()
    first = verifier.verify(token, now=now)
    assert verifier.verify(token, now=now + 1) is first


def test_cached_verification_not_returned_after_exp(make_verifier: Verifier,
                                                    dev_key: DevKey) -> None:
    """BUG: `verify(token, now=t)` checks the cache against `t` but `_decode` ignores `now`
    (PyJWT checks `exp` against the wall clock), so at `t >= exp` the cache entry is dropped
    and the token is then accepted again."""
    verifier = make_verifier(leeway_s=0)
    token = dev_key.token("svc-agent", ttl_s=600)
    exp = _exp(token)
    first = verifier.verify(token, now=exp - 600)
    assert verifier.verify(token, now=exp - 1) is first   # it is cached
    _rejects(verifier, token, "token expired", now=exp)
    _rejects(verifier, token, "token expired", now=exp + 3600)


def test_verify_checks_exp_against_the_given_now(make_verifier: Verifier,
                                                 dev_key: DevKey) -> None:
    """BUG (same root cause): a fresh verifier accepts a token at `now` far past its exp."""
    verifier = make_verifier(leeway_s=0)
    token = dev_key.token("svc-agent", ttl_s=600)
    _rejects(verifier, token, "token expired", now=_exp(token) + 3600)


def test_cache_entry_not_reused_at_exp(make_verifier: Verifier, dev_key: DevKey) -> None:
    """Whatever `_decode` then decides, the cached principal itself is never handed out."""
    verifier = make_verifier(leeway_s=0)
    token = dev_key.token("svc-agent", ttl_s=600)
    exp = _exp(token)
    first = verifier.verify(token, now=exp - 600)
    again = None
    with contextlib.suppress(Unauthenticated):
        again = verifier.verify(token, now=exp)
    assert again is not first


def test_cache_is_bounded(make_verifier: Verifier, dev_key: DevKey) -> None:
    verifier = make_verifier(token_cache_size=2)
    tokens = [dev_key.token(f"agent-{i}") for i in range(3)]
    now = time.time()
    first = [verifier.verify(t, now=now) for t in tokens]
    # The oldest entry was evicted; the two most recent are still cached.
    assert verifier.verify(tokens[2], now=now) is first[2]
    assert verifier.verify(tokens[1], now=now) is first[1]
    again = verifier.verify(tokens[0], now=now)
    assert again is not first[0]
    assert again == first[0]
    # Re-adding token 0 evicted the least recently used one (token 2).
    assert verifier.verify(tokens[1], now=now) is first[1]
    assert verifier.verify(tokens[2], now=now) is not first[2]


def test_cache_disabled_with_size_zero(make_verifier: Verifier, dev_key: DevKey) -> None:
    verifier = make_verifier(token_cache_size=0)
    token = dev_key.token("svc-agent")
    now = time.time()
    assert verifier.verify(token, now=now) is not verifier.verify(token, now=now)


def test_rejected_token_is_not_cached(verifier: TokenVerifier, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", issuer="https://evil.example.com")
    _rejects(verifier, token, "wrong issuer")
    _rejects(verifier, token, "wrong issuer")


# ---- Key configuration (gateway.keys) -----------------------------------------------

def test_load_keys_from_jwks_pins_algorithms(jwks_file: Path, dev_key: DevKey) -> None:
    keys = load_keys(_settings(jwks_file=jwks_file, algorithms=("RS256", "ES256")), {})
    assert [(k.kid, k.algorithms) for k in keys] == [(dev_key.kid, frozenset({"RS256"}))]


def test_public_key_file(tmp_path: Path, dev_key: DevKey) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(_public_pem(dev_key))
    settings = _settings(public_key_file=pem)
    keys = load_keys(settings, {})
    assert [(k.kid, k.algorithms) for k in keys] == [(None, frozenset({"RS256"}))]
    verifier = TokenVerifier(settings, keys)
    principal = verifier.verify(_sign(dev_key, _claims(tenant="acme"), kid=None))
    assert principal.tenant == "acme"
    _rejects(verifier, _sign(DevKey.generate(), _claims(), kid=None), "invalid signature")


def test_public_key_file_accepts_tokens_that_carry_a_kid(tmp_path: Path,
                                                         dev_key: DevKey) -> None:
    """BUG (contract): with `public_key_file` there is one key and it has no kid, yet every
    token whose header has a `kid` (what IdPs and `toolgate token` issue) is rejected as
    "unknown key id". Envoy jwt_authn and OPA's io.jwt.decode_verify try a kid-less key."""
    pem = tmp_path / "public.pem"
    pem.write_bytes(_public_pem(dev_key))
    settings = _settings(public_key_file=pem)
    verifier = TokenVerifier(settings, load_keys(settings, {}))
    assert verifier.verify(dev_key.token("svc-agent")).sub == "svc-agent"


def test_public_key_file_not_pem(tmp_path: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text("not a key", encoding="utf-8")
    with pytest.raises(KeyConfigError, match="not a PEM public key"):
        load_keys(_settings(public_key_file=pem), {})


def test_hs256_secret_env(dev_key: DevKey) -> None:
    secret = "s" * 32
    settings = _settings(hs256_secret_env="TG_SECRET", algorithms=("HS256",))
    verifier = TokenVerifier(settings, load_keys(settings, {"TG_SECRET": secret}))
    token = jwt.encode(_claims(), secret, algorithm="HS256")
    assert verifier.verify(token).sub == "svc-agent"
    _rejects(verifier, jwt.encode(_claims(), "t" * 32, algorithm="HS256"), "invalid signature")
    _rejects(verifier, _sign(dev_key, _claims(), kid=None), "token algorithm not allowed")


@pytest.mark.parametrize("environ", [{}, {"TG_SECRET": ""}, {"TG_SECRET": "s" * 31}])
def test_hs256_secret_env_too_short(environ: dict[str, str]) -> None:
    settings = _settings(hs256_secret_env="TG_SECRET", algorithms=("HS256",))
    with pytest.raises(KeyConfigError, match="TG_SECRET"):
        load_keys(settings, environ)


def test_jwks_key_type_not_in_allowed_algorithms(jwks_file: Path) -> None:
    with pytest.raises(KeyConfigError, match="no verification key"):
        load_keys(_settings(jwks_file=jwks_file, algorithms=("ES256", "HS256")), {})


def test_jwks_with_only_ec_key_and_rsa_allowed(tmp_path: Path) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    jwk["kid"] = "ec-1"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    with pytest.raises(KeyConfigError, match="no verification key"):
        load_keys(_settings(jwks_file=path), {})
    keys = load_keys(_settings(jwks_file=path, algorithms=("ES256",)), {})
    assert [(k.kid, k.algorithms) for k in keys] == [("ec-1", frozenset({"ES256"}))]


@pytest.mark.parametrize("text", ["not json", "{}", '{"keys": []}', '{"keys": [{"kty": "x"}]}'])
def test_unusable_jwks_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KeyConfigError):
        load_keys(_settings(jwks_file=path), {})


def test_missing_jwks_file(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError):
        load_keys(_settings(jwks_file=tmp_path / "nope.json"), {})


def test_jwks_with_an_unusable_key_before_the_signing_key(tmp_path: Path,
                                                         dev_key: DevKey) -> None:
    """BUG: load_keys zips the raw JWKS entries with `PyJWKSet.keys`, but PyJWKSet silently
    skips keys it cannot use (here an encryption key, alg RSA-OAEP, as Keycloak and Entra
    publish next to their signing keys). The lists then misalign: the signing key gets the
    skipped entry's algorithms (none allowed) and load_keys raises KeyConfigError."""
    encryption = dict(DevKey.generate(kid="enc-1").jwks["keys"][0])
    encryption.update({"use": "enc", "alg": "RSA-OAEP"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [encryption, *dev_key.jwks["keys"]]}), encoding="utf-8")
    settings = _settings(jwks_file=path)
    keys = load_keys(settings, {})
    assert [(k.kid, k.algorithms) for k in keys] == [(dev_key.kid, frozenset({"RS256"}))]
    assert TokenVerifier(settings, keys).verify(dev_key.token("svc-agent")).sub == "svc-agent"


def test_jwks_with_two_keys_selects_by_kid(tmp_path: Path, dev_key: DevKey) -> None:
    other = DevKey.generate(kid="second")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [*dev_key.jwks["keys"], *other.jwks["keys"]]}),
                    encoding="utf-8")
    settings = _settings(jwks_file=path)
    verifier = TokenVerifier(settings, load_keys(settings, {}))
    assert verifier.verify(dev_key.token("a")).sub == "a"
    assert verifier.verify(other.token("b")).sub == "b"
    # Without a kid there is no way to choose between two keys.
    _rejects(verifier, _sign(dev_key, _claims(), kid=None), "token has no key id")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, False,
                                   "1700000000", None, [1700000000]], ids=repr)
def test_exp_and_nbf_must_be_finite(verifier: TokenVerifier, dev_key: DevKey, claim: str,
                                    value: object) -> None:
    """JSON parsers read NaN and Infinity; an `exp` of Infinity would never expire. `iat`
    too (it reaches the policy), and none of them may be a bool, a string or null."""
    description = "missing claim exp" if (claim, value) == ("exp", None) else \
        f"malformed {claim} claim"
    _rejects(verifier, _sign(dev_key, _claims(**{claim: value})), description)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_date_too_large_for_a_float_is_401(verifier: TokenVerifier, dev_key: DevKey,
                                             claim: str) -> None:
    """`exp: 10**400` overflowed the float arithmetic of the expiry check: a 500."""
    _rejects(verifier, _sign(dev_key, _claims(**{claim: 10**400})),
             "a claim holds a value the policy cannot be given")


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\t", "\n"], ids=repr)
def test_scopes_are_split_on_spaces_only(verifier: TokenVerifier, dev_key: DevKey,
                                         space: str) -> None:
    """`orders:read<NBSP>billing:refund` is one (unknown) scope, not two granted ones."""
    token = dev_key.token("svc", scopes=[f"orders:read{space}billing:refund", "crm:read"])
    assert verifier.verify(token).scopes == frozenset({f"orders:read{space}billing:refund",
                                                       "crm:read"})


def test_a_claim_the_policy_cannot_be_given_is_401(verifier: TokenVerifier,
                                                   dev_key: DevKey) -> None:
    _rejects(verifier, _sign(dev_key, _claims(big=2**64)),
             "a claim holds a value the policy cannot be given")


@pytest.mark.parametrize(("jwk", "message"), [
    ({"kty": "oct", "kid": "short", "k": base64.urlsafe_b64encode(b"s" * 16).decode()
      .rstrip("=")}, "HMAC secret needs at least 32 bytes"),
    (None, "RSA key needs at least 2048 bits"),   # a 1024-bit RSA key, made below
])
def test_a_weak_key_in_a_jwks_is_refused_at_start(tmp_path: Path, jwk: dict[str, Any] | None,
                                                  message: str) -> None:
    if jwk is None:
        weak = 1024   # on purpose
        small = rsa.generate_private_key(public_exponent=65537, key_size=weak)
        jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key())),
               "kid": "small"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    with pytest.raises(KeyConfigError, match=message):
        load_keys(_settings(jwks_file=path, algorithms=("RS256", "HS256")), {})


def _weak_rsa_jwk(kid: str, **extra: str) -> dict[str, Any]:
    weak = 1024   # on purpose
    small = rsa.generate_private_key(public_exponent=65537, key_size=weak).public_key()
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(small)), "kid": kid, **extra}


@pytest.mark.parametrize(("weak_jwk", "algorithms"), [
    ("rsa", ("ES256",)),             # no RSA algorithm is allowed
    ("rsa-ps256", ("ES256", "RS256")),   # pinned by its `alg` to one that is not allowed
    ("oct", ("ES256",)),             # no HMAC algorithm is allowed
])
def test_a_weak_key_no_allowed_algorithm_can_use_is_ignored(
        tmp_path: Path, weak_jwk: str, algorithms: tuple[str, ...]) -> None:
    """A weak key the gateway could never verify with is no reason to refuse the file:
    IdPs leave old keys in their sets."""
    weak = {"kty": "oct", "kid": "short", "k": _b64(b"s" * 16)} if weak_jwk == "oct" else \
        _weak_rsa_jwk("small", **({"alg": "PS256"} if weak_jwk == "rsa-ps256" else {}))
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    good = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public)), "kid": "ec-1"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [weak, good]}), encoding="utf-8")
    keys = load_keys(_settings(jwks_file=path, algorithms=algorithms), {})
    assert [(k.kid, k.algorithms) for k in keys] == [("ec-1", frozenset({"ES256"}))]


def test_a_weak_usable_key_beside_a_good_one_refuses_the_file(tmp_path: Path,
                                                             dev_key: DevKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [*dev_key.jwks["keys"], _weak_rsa_jwk("small")]}),
                    encoding="utf-8")
    with pytest.raises(KeyConfigError, match="key small: an RSA key needs at least 2048 bits"):
        load_keys(_settings(jwks_file=path, algorithms=("RS256", "ES256")), {})


def test_a_weak_rsa_public_key_file_is_refused_at_start(tmp_path: Path) -> None:
    weak = 1024   # on purpose
    small = rsa.generate_private_key(public_exponent=65537, key_size=weak).public_key()
    pem = tmp_path / "public.pem"
    pem.write_bytes(small.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyConfigError, match="at least 2048 bits"):
        load_keys(_settings(public_key_file=pem), {})


# ---- Key sources (the JWKS URL's own tests: tests/jwks/) -----------------------------------

def test_an_unknown_kid_of_keys_read_at_start_is_a_plain_401(verifier: TokenVerifier) -> None:
    """Only a source that can fetch newer keys makes a token wait (`KeyMiss`)."""
    other = DevKey.generate(kid="other")
    error = _rejects(verifier, other.token("svc"), "unknown key id")
    assert not isinstance(error, KeyMiss)
    assert not verifier.keys.refreshable


async def test_authenticate_bearer_is_bearer_principal_that_can_wait(
        verifier: TokenVerifier, dev_key: DevKey) -> None:
    principal = await authenticate_bearer(f"Bearer {dev_key.token('svc')}", verifier)
    assert principal.sub == "svc"
    with pytest.raises(Unauthenticated, match="a bearer token is required"):
        await authenticate_bearer("Basic c3ZjOnB3", verifier)


def test_keys_read_at_start_show_their_source(jwks_file: Path) -> None:
    settings = _settings(jwks_file=jwks_file)
    keys = StaticKeys(load_keys(settings, {}), "jwks_file")
    assert keys.status() == {"source": "jwks_file", "keys": 1}
    assert keys.problem() is None
