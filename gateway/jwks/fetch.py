"""One GET of `auth.jwks_url`, bounded in every way the network could stretch it.

SECURITY: redirects are not followed (a 3xx is a failed fetch: keys come from the URL the
operator wrote, not from wherever its server points); only a 200 is read; the body is read
to at most `MAX_JWKS_BYTES` after decompression (a larger one, or a gzip bomb, is a failed
fetch); the whole exchange, connecting included, must end within `auth.jwks_timeout_ms`;
no cookies are kept and no proxy or CA settings are taken from the environment except the
standard `SSL_CERT_FILE`/`SSL_CERT_DIR` of Python's TLS. A failure's text names the URL
(without its query) and what went wrong, never the body.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway import __version__
from gateway.config import AuthSettings
from gateway.jwks.document import JwksInvalid, parse_jwks
from gateway.jwks.url import shown
from gateway.keys import KeyConfigError, KeySet

MAX_JWKS_BYTES = 512 * 1024   # IdPs serve a few kilobytes; a bound on memory and parse time
_HEADERS = {"Accept": "application/jwk-set+json, application/json",
            "User-Agent": f"toolgate/{__version__}"}


class JwksFetchError(Exception):
    """The URL gave no usable answer; the text says why without quoting the body."""


def new_session() -> aiohttp.ClientSession:
    """The session a key source fetches with: one connection at a time, a new one for each
    fetch (minutes apart: a kept-alive one would have gone stale behind a load balancer),
    no cookies, nothing from the environment."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=True),
                                 cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 headers=_HEADERS)


async def fetch_jwks(session: aiohttp.ClientSession, url: str, timeout_s: float) -> bytes:
    """The body of a 200 answer to GET `url`, or `JwksFetchError`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _get(session, url)
    except TimeoutError:
        raise JwksFetchError(f"no answer within {timeout_s:g} s") from None
    except aiohttp.ClientConnectionError as exc:
        # A connection or TLS failure: its text names the host and the OS's reason.
        raise JwksFetchError(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    except aiohttp.ClientError as exc:
        raise JwksFetchError(f"{type(exc).__name__}") from None


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    # SECURITY: allow_redirects=False — a redirect is refused, never followed.
    async with session.get(url, allow_redirects=False) as response:
        if 300 <= response.status < 400:
            raise JwksFetchError(f"answered {response.status}; redirects are not followed")
        if response.status != 200:
            raise JwksFetchError(f"answered {response.status}")
        length = response.content_length
        if length is not None and length > MAX_JWKS_BYTES:
            raise JwksFetchError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(65_536):
            body += chunk
            # SECURITY: counted after decompression, so a small gzip cannot grow past it.
            if len(body) > MAX_JWKS_BYTES:
                raise JwksFetchError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        return bytes(body)


def fetch_key_set(settings: AuthSettings) -> KeySet:
    """The key set `settings.jwks_url` serves now, fetched once, outside any event loop
    (`toolgate check`). Raises `KeyConfigError` naming the URL and the problem."""
    assert settings.jwks_url is not None
    url = settings.jwks_url

    async def once() -> bytes:
        async with new_session() as session:
            return await fetch_jwks(session, url, settings.jwks_timeout_s)

    try:
        keyset, _ = parse_jwks(asyncio.run(once()), frozenset(settings.algorithms))
    except (JwksFetchError, JwksInvalid) as exc:
        raise KeyConfigError(f"auth.jwks_url {shown(url)}: {exc}") from None
    return keyset
