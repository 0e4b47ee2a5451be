"""Verification keys for agent tokens, from a JWKS file, a PEM public key or an HMAC secret
in the environment.

Each key is pinned to the algorithms of its own key type (and to its JWK `alg`), narrowed by
the configured allow-list, so a token's header cannot make an RSA public key act as an HMAC
secret. A key too weak to trust (an HMAC secret under 32 bytes, an RSA key under 2048 bits)
is refused at start, whatever its source. Identity providers publish encryption keys in the
same set; only signing keys this library understands are kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.config import AuthSettings

FAMILIES: Mapping[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
    "oct": frozenset({"HS256", "HS384", "HS512"}),
}
MIN_HMAC_SECRET_BYTES = 32
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    key: Any
    algorithms: frozenset[str]


class KeyConfigError(Exception):
    """The configured key material cannot be used."""


def load_keys(settings: AuthSettings, environ: Mapping[str, str]) -> list[VerificationKey]:
    allowed = frozenset(settings.algorithms)
    keys: list[VerificationKey] = []
    if settings.jwks_file is not None:
        for raw in _jwks_entries(settings.jwks_file):
            # Identity providers publish encryption keys in the same set; only signing keys
            # (no `use`, or `use: sig`) that this library understands can verify tokens.
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue
            family = FAMILIES.get(str(raw.get("kty")), frozenset())
            if raw.get("alg"):
                family = family & {raw["alg"]}
            weak = _weakness(jwk.key)
            if weak:
                raise KeyConfigError(f"{settings.jwks_file}: key {jwk.key_id or '(no kid)'}: "
                                     f"{weak}")
            keys.append(VerificationKey(jwk.key_id, jwk.key, family & allowed))
    elif settings.public_key_file is not None:
        try:
            pem = settings.public_key_file.read_bytes()
            public = serialization.load_pem_public_key(pem)
        except (OSError, ValueError) as exc:
            raise KeyConfigError(f"{settings.public_key_file}: not a PEM public key") from exc
        weak = _weakness(public)
        if weak:
            raise KeyConfigError(f"{settings.public_key_file}: {weak}")
        keys.append(VerificationKey(None, public, _family_of(public) & allowed))
    elif settings.hs256_secret_env is not None:
        secret = environ.get(settings.hs256_secret_env, "").encode()
        if len(secret) < MIN_HMAC_SECRET_BYTES:
            raise KeyConfigError(f"environment variable {settings.hs256_secret_env} must hold "
                                 f"an HMAC secret of at least {MIN_HMAC_SECRET_BYTES} bytes")
        keys.append(VerificationKey(None, secret, FAMILIES["oct"] & allowed))
    usable = [k for k in keys if k.algorithms]
    if not usable:
        raise KeyConfigError("no verification key can be used with the allowed algorithms "
                             f"{sorted(allowed)}")
    return usable


def _weakness(key: Any) -> str | None:
    """Why a key is too weak to verify tokens with (a forger could guess or factor it)."""
    if isinstance(key, bytes) and len(key) < MIN_HMAC_SECRET_BYTES:
        return f"an HMAC secret needs at least {MIN_HMAC_SECRET_BYTES} bytes"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"an RSA key needs at least {MIN_RSA_BITS} bits"
    return None


def _jwks_entries(path: Path) -> list[Any]:
    try:
        jwks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"{path}: not a usable JWKS: {exc}") from exc
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        raise KeyConfigError(f"{path}: not a usable JWKS: no 'keys' list")
    return entries


def _family_of(public: Any) -> frozenset[str]:
    if isinstance(public, rsa.RSAPublicKey):
        return FAMILIES["RSA"]
    if isinstance(public, ec.EllipticCurvePublicKey):
        return FAMILIES["EC"]
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return FAMILIES["OKP"]
    return frozenset()
