"""Agent tokens: verify a scoped JWT and turn its claims into a `Principal`.

RFC 8725 practice, enforced here rather than left to the library's defaults:
- the algorithm allow-list comes from config and never contains `none`;
- every key is pinned to the algorithms of its own key type (`gateway.keys`), so the token
  header cannot make an RSA public key act as an HMAC secret;
- `kid` is only a lookup key; an unknown `kid` is a 401, never a fallback to another key
  (with a key source that can fetch newer keys, `auth.jwks_url`, the verifier first raises
  `KeyMiss`, whose `retry` waits for the source's coalesced, rate-limited fetch and then
  verifies again or refuses);
- `iss`, `aud`, `exp`, `sub` are required; `exp`/`nbf` are checked with the configured
  leeway, and a date (`exp`, `nbf`, `iat`) that is not a finite number is refused.
Every claim the principal is made of is typed, and its names bounded (`_CLAIMS`): one that
is present but not usable as it is makes the token a 401 naming it, never a claim dropped
or replaced.
Verified tokens are cached, but a cache entry never outlives the token's own `exp`, nor
the key set it was verified with: the cache is emptied whenever the source's set changes.
Verification is synchronous and takes no lock: the set is one attribute read, and only a
`KeyMiss` awaits anything.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from gateway.config import AuthSettings
from gateway.core.errors import Unauthenticated
from gateway.keys import KeySet, KeySource, StaticKeys, VerificationKey

MAX_RUN_ID = 128
# `sub`, `tenant`, `agent`: roomy for any identity provider's names (a Kubernetes service
# account's `sub` is under 350 characters), yet a bound on what every record and run holds.
MAX_NAME = 1024
# What the agent is told (RFC 6750 error_description); never the library's own text.
_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "invalid signature"),
)


@dataclass(frozen=True)
class Principal:
    """Who is calling, from a verified token. `claims` are the token's claims as verified."""

    sub: str
    agent: str | None
    tenant: str | None
    scopes: frozenset[str]
    roles: tuple[str, ...]
    run_id: str | None
    claims: Mapping[str, Any]

    def as_input(self) -> dict[str, Any]:
        return {"sub": self.sub, "agent": self.agent, "tenant": self.tenant,
                "scopes": sorted(self.scopes), "roles": list(self.roles),
                "claims": dict(self.claims)}

    def as_audit(self) -> dict[str, Any]:
        return {"sub": self.sub, "agent": self.agent, "tenant": self.tenant}


def _is_number(value: Any) -> bool:
    # NaN and Infinity compare false (or true) with everything: an `exp` of Infinity would
    # never expire, one of NaN would never be checked.
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def is_run_id(value: object) -> bool:
    """A run id the gateway can use, from the token or the `X-Agent-Run-Id` header: a
    non-empty printable string (no control character, no lone surrogate, no separator but
    the space) of at most `MAX_RUN_ID` characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_RUN_ID and value.isprintable()


def _is_subject(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()


def _is_scope_name(value: object) -> bool:
    # A tenant or an agent is a name the kill switch must be able to address (its scopes
    # are `tenant:<t>` and `agent:<a>`, with no whitespace): no space either.
    return _is_subject(value) and " " not in str(value)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# SECURITY: every claim the principal is made of, and what it must be when present. A claim
# of another type is never dropped: a `tenant` dropped means the default budgets and runs
# shared with every tenant-less token; a `run_id` dropped (or null) means the unsigned
# header's run, a fresh budget for the asking. Only an absent optional claim is absent.
_CLAIMS: Mapping[str, Callable[[object], bool]] = {
    "sub": _is_subject,
    "tenant": _is_scope_name,
    "agent": _is_scope_name,
    "run_id": is_run_id,
    "roles": _is_strings,
    "scope": lambda value: isinstance(value, str),
    "scp": lambda value: isinstance(value, str) or _is_strings(value),
}
# Numeric dates (RFC 7519 NumericDate), checked in `_decode` before any of the above.
_DATES = ("exp", "nbf", "iat")


def _scope_tokens(value: str) -> list[str]:
    """RFC 6749 §3.3: scope tokens are separated by spaces (U+0020) only; other Unicode
    whitespace is part of a token, never a separator that could make a scope appear."""
    return [token for token in value.split(" ") if token]


def _unauthenticated(description: str) -> Unauthenticated:
    return Unauthenticated(description, headers={"WWW-Authenticate": (
        f'Bearer realm="toolgate", error="invalid_token", error_description="{description}"')})


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The principal of verified claims, or `Unauthenticated` naming the first claim that
    is present but not what `_CLAIMS` says it must be (or `sub`, if it is missing)."""
    if "sub" not in claims:
        raise _unauthenticated("missing claim sub")
    for name, usable in _CLAIMS.items():
        if name in claims and not usable(claims[name]):
            raise _unauthenticated(f"malformed {name} claim")
    scopes: set[str] = set(_scope_tokens(claims.get("scope", "")))
    scp = claims.get("scp", [])
    scopes.update(_scope_tokens(scp) if isinstance(scp, str) else (s for s in scp if s))
    return Principal(
        sub=claims["sub"], agent=claims.get("agent"), tenant=claims.get("tenant"),
        scopes=frozenset(scopes), roles=tuple(claims.get("roles", ())),
        run_id=claims.get("run_id"), claims=dict(claims))


class KeyMiss(Unauthenticated):
    """The token names a `kid` its key source does not hold, and the source can fetch
    newer keys. It is the 401 the token gets if nobody waits (so a caller that does not
    handle it fails closed); `await miss.retry()` waits for the source's fetch (coalesced,
    rate-limited: `gateway.jwks.source`) and returns the principal or raises the final
    `Unauthenticated`. The token is held only for that retry, never shown."""

    def __init__(self, refusal: Unauthenticated, verifier: TokenVerifier, token: str) -> None:
        super().__init__(refusal.message, headers=refusal.headers)
        self._verifier = verifier
        self._token = token

    async def retry(self) -> Principal:
        await self._verifier.keys.refresh_for_miss()
        return self._verifier.verify(self._token, refresh=False)


class TokenVerifier:
    """Verifies bearer tokens against pinned keys; keeps a bounded cache of results."""

    def __init__(self, settings: AuthSettings,
                 keys: list[VerificationKey] | KeySource) -> None:
        self._settings = settings
        self.keys: KeySource = StaticKeys(keys) if isinstance(keys, list) else keys
        self._keyset = self.keys.current
        self._cache: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()

    def verify(self, token: str, now: float | None = None, *,
               refresh: bool = True) -> Principal:
        """The token's principal, or `Unauthenticated` with an RFC 6750 description
        (`KeyMiss` when `refresh` and the source may yet fetch the token's key)."""
        now = time.time() if now is None else now
        keyset = self.keys.current
        if keyset is not self._keyset:
            # SECURITY: a verification holds only with the set that made it: a key removed
            # at the IdP must stop its cached tokens too.
            self._keyset = keyset
            self._cache.clear()
        hit = self._cache.get(token)
        if hit is not None:
            principal, valid_from, exp = hit
            # SECURITY: a cached verification holds only while a fresh one would: not past
            # the token's own exp, nor before its nbf (a clock stepped back).
            if valid_from <= now < exp:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        claims = self._decode(token, now, keyset, refresh)
        principal = principal_from_claims(claims)
        exp = float(claims["exp"])
        nbf = claims.get("nbf")
        valid_from = -math.inf if nbf is None else float(nbf) - self._settings.leeway_s
        cacheable = nbf is None or now >= nbf
        if self._settings.token_cache_size and cacheable and now < exp:
            self._cache[token] = (principal, valid_from, exp)
            if len(self._cache) > self._settings.token_cache_size:
                self._cache.popitem(last=False)
        return principal

    @staticmethod
    def _select_key(kid: Any, keyset: KeySet) -> VerificationKey:
        """The key for a token; `kid` is only ever a lookup key (RFC 8725)."""
        keys = keyset.keys
        if not keyset.kid_required and len(keys) == 1 and (keys[0].kid is None or kid is None):
            # One configured key with no id (a PEM file, an HMAC secret) has nothing to look
            # up, so a `kid` in the token header selects nothing and is ignored; a token
            # without a kid can only mean the one key there is.
            return keys[0]
        if kid is None:
            raise _unauthenticated("token has no key id")
        key = keyset.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _unauthenticated("unknown key id" if keys else
                                   "no verification keys loaded yet")
        return key

    def _key_for(self, token: str, kid: Any, keyset: KeySet, now: float,
                 refresh: bool) -> VerificationKey:
        """`_select_key`, with `KeyMiss` for a key the source may yet fetch."""
        try:
            return self._select_key(kid, keyset)
        except Unauthenticated as refusal:
            if refresh and self._worth_a_fetch(token, kid, now):
                raise KeyMiss(refusal, self, token) from None
            raise

    def _worth_a_fetch(self, token: str, kid: Any, now: float) -> bool:
        """Whether a token with an unknown `kid` may make the source fetch: a string kid,
        and, read without verification, this gateway's issuer and not expired. Anything
        else would be refused whatever the key, and must not spend the rate limit that a
        real rotation needs."""
        if not isinstance(kid, str) or not self.keys.refreshable:
            return False
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        exp = claims.get("exp")
        # No float conversion: an `exp` of 10**400 compares, it does not overflow.
        return (claims.get("iss") == self._settings.issuer
                and isinstance(exp, int | float) and not isinstance(exp, bool)
                and now < exp + self._settings.leeway_s)

    def _decode(self, token: str, now: float, keyset: KeySet,
                refresh: bool) -> dict[str, Any]:
        # A JWT is base64url and dots: anything else (a lone surrogate, which the library
        # would fail to encode) is malformed, not an internal error.
        if not token.isascii():
            raise _unauthenticated("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated("malformed token") from None
        alg = header.get("alg")
        # SECURITY: the allow-list is checked before any key is touched; "none" is never in it.
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise _unauthenticated("token algorithm not allowed")
        key = self._key_for(token, header.get("kid"), keyset, now, refresh)
        # SECURITY: the key decides which algorithms it verifies, not the token header.
        if alg not in key.algorithms:
            raise _unauthenticated("token algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=self._settings.audience,
                issuer=self._settings.issuer,
                # exp/nbf are checked below against `now`, the same clock the cache uses;
                # sub with the other claims of `_CLAIMS`, so its refusal names it too.
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": False,
                         "verify_exp": False, "verify_nbf": False, "verify_sub": False})
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            description = next((text for cls, text in _JWT_ERRORS if isinstance(exc, cls)),
                               "invalid token")
            raise _unauthenticated(description) from None
        try:
            # The claims go to the policy (input.principal.claims) and nowhere else: a value
            # JSON cannot carry to it (an integer beyond 64 bits) is refused here, once.
            # First: a date of 10**400 would overflow the float arithmetic below (a 500).
            orjson.dumps(claims)
        except (TypeError, orjson.JSONEncodeError):
            raise _unauthenticated("a claim holds a value the policy cannot be given") \
                from None
        for name in _DATES:
            if name in claims and not _is_number(claims[name]):
                raise _unauthenticated(f"malformed {name} claim")
        leeway = self._settings.leeway_s
        exp, nbf = claims["exp"], claims.get("nbf")
        if now >= exp + leeway:
            raise _unauthenticated("token expired")
        if nbf is not None and now < nbf - leeway:
            raise _unauthenticated("token not yet valid")
        return claims


def bearer_principal(authorization: str | None, verifier: TokenVerifier) -> Principal:
    """The principal of an `Authorization: Bearer <JWT>` header value, or `Unauthenticated`
    (`KeyMiss` for a key the source may yet fetch: see `authenticate_bearer`). Synchronous:
    the agent port's hot path calls it and awaits only on a `KeyMiss`."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer token is required",
                              headers={"WWW-Authenticate": 'Bearer realm="toolgate"'})
    return verifier.verify(token.strip())


async def authenticate_bearer(authorization: str | None, verifier: TokenVerifier) -> Principal:
    """`bearer_principal`, waiting for the key source's fetch when the token names a key it
    may yet fetch (`KeyMiss`). For paths off the hot one (the admin port, the agent's
    poll); the pipeline's `authenticate` stage does the same inline."""
    try:
        return bearer_principal(authorization, verifier)
    except KeyMiss as miss:
        return await miss.retry()
