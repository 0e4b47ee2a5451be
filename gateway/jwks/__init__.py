"""Keys from an identity provider's JWKS endpoint (`auth.jwks_url`), so a key rotation at
the IdP needs no restart.

`url` says which URLs may serve keys; `fetch` does one bounded GET; `document` reads the
answer into a `gateway.keys.KeySet` or refuses it whole; `source.RemoteKeys` keeps the set
current (a fetch at start, a background refresh, a coalesced and rate-limited fetch for a
token whose `kid` is new) and is what the verifier reads.
"""

from gateway.jwks.document import JwksInvalid, parse_jwks
from gateway.jwks.fetch import JwksFetchError, fetch_jwks, fetch_key_set
from gateway.jwks.source import RemoteKeys

__all__ = ["JwksFetchError", "JwksInvalid", "RemoteKeys", "fetch_jwks", "fetch_key_set",
           "parse_jwks"]
