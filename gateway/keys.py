"""Verification keys for agent tokens, from a JWKS file, a PEM public key, an HMAC secret
in the environment, or an identity provider's JWKS URL (`gateway.jwks`).

Each key is pinned to the algorithms of its own key type (and to its JWK `alg`), narrowed by
the configured allow-list, so a token's header cannot make an RSA public key act as an HMAC
secret. A key too weak to trust (an HMAC secret under 32 bytes, an RSA key under 2048 bits)
is refused, whatever its source, when an allowed algorithm could use it; in a JWKS, a weak
key no allowed algorithm can use is ignored like any other unusable key. Identity providers
publish encryption keys in the same set; only signing keys this library understands are
kept. `jwk_key` is that rule for one JWK, shared by the file and the URL.

The verifier reads its keys through a `KeySource`: `StaticKeys` for what is read once at
start, `gateway.jwks.RemoteKeys` for a URL, whose `current` set is replaced while it runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


class WeakKey(ValueError):
    """A key a forger could guess or factor; the text says why."""


@dataclass(frozen=True)
class KeySet:
    """The keys a token may be verified with, as one value: a source swaps whole sets.
    `kid_required`: a token must name its key even when the set holds one (a set that
    changes under the gateway must not let a kid-less token mean "whichever key is alone
    today"). `revision` names the set's content (a URL's set), without showing it."""

    keys: tuple[VerificationKey, ...]
    kid_required: bool = False
    revision: str | None = None
    by_kid: Mapping[str, VerificationKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_kid", {k.kid: k for k in self.keys if k.kid is not None})


class KeySource(Protocol):
    """Where the verifier's keys come from. `current` is read on every verification and
    must be a plain attribute read; a source that can fetch newer keys says so with
    `refreshable`, and `refresh_for_miss` then fetches (coalesced, rate-limited) for a
    token whose `kid` is not in `current`."""

    @property
    def current(self) -> KeySet: ...

    @property
    def refreshable(self) -> bool: ...

    async def refresh_for_miss(self) -> None: ...

    def problem(self) -> str | None:
        """Why no token can be verified now (for `/readyz`), or None."""

    def status(self) -> dict[str, Any]:
        """What `/readyz` shows of the keys: the source and how many, never the keys."""

    async def close(self) -> None: ...


class StaticKeys:
    """Keys read once at start (`jwks_file`, `public_key_file`, `hs256_secret_env`)."""

    refreshable = False

    def __init__(self, keys: list[VerificationKey], source: str = "static") -> None:
        self.current = KeySet(tuple(keys))
        self._source = source

    async def refresh_for_miss(self) -> None:
        return

    def problem(self) -> str | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"source": self._source, "keys": len(self.current.keys)}

    async def close(self) -> None:
        return


def source_name(settings: AuthSettings) -> str:
    """The config key the keys come from, for `/readyz` and messages."""
    for name in ("jwks_url", "jwks_file", "public_key_file", "hs256_secret_env"):
        if getattr(settings, name) is not None:
            return name
    return "none"


def jwk_key(raw: Mapping[str, Any], allowed: frozenset[str]) -> VerificationKey | None:
    """The verification key of one JWK, pinned to the algorithms of its type, its `alg` and
    `allowed`; None for a key that cannot verify tokens here (an encryption key, a type or
    curve this library does not know, material it cannot read, or no allowed algorithm),
    weak or not. Raises `WeakKey` for a key an allowed algorithm could use but that must
    not be trusted."""
    # Identity providers publish encryption keys in the same set; only signing keys
    # (no `use`, or `use: sig`) that this library understands can verify tokens.
    alg = raw.get("alg")
    if raw.get("use", "sig") != "sig" or not isinstance(alg, str | None):
        return None
    try:
        jwk = jwt.PyJWK(dict(raw))
    except jwt.PyJWTError:   # its text quotes the key: never passed on
        return None
    family = FAMILIES.get(str(raw.get("kty")), frozenset())
    if alg:
        family = family & {alg}
    usable = family & allowed
    if not usable:
        # A key no allowed algorithm can use verifies nothing here, however weak: it is
        # ignored, never a reason to refuse the keys beside it (a 1024-bit RSA key left in
        # an IdP's set does not matter to a gateway that only allows ES256).
        return None
    # SECURITY: checked only now, for a key a token could be verified with.
    weak = _weakness(jwk.key)
    if weak:
        raise WeakKey(weak)
    return VerificationKey(jwk.key_id, jwk.key, usable)


def load_keys(settings: AuthSettings, environ: Mapping[str, str]) -> list[VerificationKey]:
    """The keys of a file or environment key source, read now; for `jwks_url`, the set the
    URL serves now, fetched once (what `toolgate check` reports; a gateway keeps a
    `gateway.jwks.RemoteKeys` instead). Raises `KeyConfigError`."""
    allowed = frozenset(settings.algorithms)
    keys: list[VerificationKey] = []
    if settings.jwks_url is not None:
        from gateway.jwks import fetch_key_set  # noqa: PLC0415 (aiohttp, only for a URL)

        return list(fetch_key_set(settings).keys)
    if settings.jwks_file is not None:
        for position, raw in enumerate(_jwks_entries(settings.jwks_file), 1):
            if not isinstance(raw, dict):
                continue
            try:
                key = jwk_key(raw, allowed)
            except WeakKey as exc:
                raise KeyConfigError(f"{settings.jwks_file}: key {raw.get('kid') or position}"
                                     f": {exc}") from None
            if key is not None:
                keys.append(key)
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
