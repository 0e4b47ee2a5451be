"""`auth.jwks_url` as configured: which URLs may serve keys, and how one is named in logs.

SECURITY: keys decide who the gateway believes, so they come over TLS; plain `http://` is
allowed only to a loopback host (a test IdP, a local development server), which no one
between the gateway and the IdP can reach. The URL carries no credentials (they would
reach logs and `/readyz`). Checked when the config is loaded (`gateway.config`), so
`toolgate check --offline` reports it too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.keys import FAMILIES

LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost` (which RFC 6761 reserves for loopback)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why `url` may not serve the gateway's keys, or None."""
    parts = urlsplit(url)
    try:
        parts.port   # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        return f"auth.jwks_url: not a URL with a valid port: {shown(url)}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "auth.jwks_url must be an https:// URL"
    if "@" in parts.netloc:
        return "auth.jwks_url takes no credentials (they would be shown in logs)"
    if parts.fragment:
        return "auth.jwks_url takes no #fragment"
    # SECURITY: a key set read in clear could be replaced on the way.
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return ("auth.jwks_url must be https://: http:// is allowed only to a loopback host "
                "(127.0.0.0/8, ::1, localhost)")
    return None


def auth_problems(auth: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Problems of an `auth` section with a `jwks_url`, as (config path, message)."""
    url = auth.get("jwks_url")
    if not isinstance(url, str):
        return []
    problems: list[tuple[tuple[str, ...], str]] = []
    problem = url_problem(url)
    if problem is not None:
        problems.append((("auth", "jwks_url"), problem))
    algorithms = auth.get("algorithms")
    if isinstance(algorithms, list) and algorithms and set(algorithms) <= FAMILIES["oct"]:
        # SECURITY: an HMAC key is a secret; one served at a URL is anyone's to sign with.
        problems.append((("auth", "algorithms"),
                         "auth.jwks_url serves public keys; HS256/HS384/HS512 need a "
                         "shared secret (hs256_secret_env), never one fetched from a URL"))
    return problems


def shown(url: str) -> str:
    """The URL as logs and `/readyz` name it: scheme, host, port and path, no query (some
    IdPs put a tenant or an application id there) and nothing after it."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
