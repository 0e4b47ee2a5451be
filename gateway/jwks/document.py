"""A JWKS document served at `auth.jwks_url`, read into a `KeySet` — or refused whole.

The rules for one key are the file's (`gateway.keys.jwk_key`: pinned to its type, its
`alg` and the allow-list; a weak key refused when an allowed algorithm could use it, else
ignored); what a URL adds, because its bytes come from the network and change while the
gateway runs:
- SECURITY: the document is refused as a whole (and the last good set kept) when it is not
  a JSON object with a `keys` list of at most `MAX_KEYS` objects, when a member a key is
  chosen by (`kty`, `kid`, `use`, `alg`) is not a string, when a usable key is weak, when
  two usable keys share a `kid`, or when no key is usable at all (an empty set is taken for
  a broken endpoint, not for "trust no one");
- keys without a `kid` are ignored: a token must name its key (`KeySet.kid_required`), as
  a set that changes under the gateway cannot make "the only key" mean one key;
- `oct` keys are ignored: an HMAC secret published at a URL is no secret;
- encryption keys, unknown types and curves, material the library cannot read, and keys
  no allowed algorithm can use (weak or not) are ignored, as in a file: a token naming one
  gets 401 "unknown key id".
No message quotes the document: keys are named by their position (`key #2`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.keys import KeySet, VerificationKey, WeakKey, jwk_key

MAX_KEYS = 100          # IdPs publish a handful; a bound on the work one document causes
_STRING_MEMBERS = ("kty", "kid", "use", "alg")


class JwksInvalid(Exception):
    """The document cannot be used; the text says why without quoting it."""


def parse_jwks(body: bytes, allowed: frozenset[str]) -> tuple[KeySet, int]:
    """The key set of a JWKS document, and how many of its entries were ignored."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JwksInvalid("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksInvalid("not a JWKS: no 'keys' list")
    if len(entries) > MAX_KEYS:
        raise JwksInvalid(f"{len(entries)} keys; at most {MAX_KEYS} are read")
    keys: list[VerificationKey] = []
    used: list[dict[str, Any]] = []
    for position, raw in enumerate(entries, 1):
        key = _entry(position, raw, allowed)
        if key is None:
            continue
        if key.kid in (k.kid for k in keys):
            raise JwksInvalid(f"key #{position}: another key of the set has the same kid")
        keys.append(key)
        used.append(raw)
    if not keys:
        raise JwksInvalid("no key in it can verify tokens with the allowed algorithms "
                          f"{sorted(allowed)} (keys need a kid; oct keys are never used)")
    revision = hashlib.sha256(orjson.dumps(sorted(used, key=lambda r: str(r["kid"])),
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return KeySet(tuple(keys), kid_required=True, revision=revision), len(entries) - len(keys)


def _entry(position: int, raw: object, allowed: frozenset[str]) -> VerificationKey | None:
    if not isinstance(raw, dict):
        raise JwksInvalid(f"key #{position} is not a JSON object")
    for member in _STRING_MEMBERS:
        if member in raw and not isinstance(raw[member], str):
            raise JwksInvalid(f"key #{position}: '{member}' is not a string")
    if "kty" not in raw:
        raise JwksInvalid(f"key #{position} has no 'kty'")
    # SECURITY: an HMAC key served at a URL is a secret anyone can read.
    if raw["kty"] == "oct" or not raw.get("kid"):
        return None
    try:
        return jwk_key(raw, allowed)
    except WeakKey as exc:
        raise JwksInvalid(f"key #{position}: {exc}") from None
