"""The upstream client: one pooled `ClientSession` per upstream, credentials injected.

It sends an `OutboundPlan` as it is — method, path, query, headers and body — adding only
`Host` and `Content-Length` (HTTP framing) and the upstream's credential, read once at
start from its env var or file. aiohttp's own default headers (`User-Agent`, `Accept`,
`Accept-Encoding`, `Content-Type`) are switched off, so nothing reaches an upstream that the
plan, and therefore an approver, did not show.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.core.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from gateway.core.outbound import OutboundPlan
from gateway.upstreams.headers import response_headers

# Idle pooled connections are closed after this, before most servers close them (Node and
# uvicorn: 5 s): a request is never resent, so one written into a connection the upstream
# had just closed fails (502) instead of being retried.
KEEPALIVE_S = 4.0
NO_DEFAULT_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class CredentialError(Exception):
    """An upstream credential named in the config cannot be read."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    latency_ms: float


def read_credential(upstream: Upstream, environ: Mapping[str, str]) -> tuple[str, str] | None:
    cred = upstream.credential
    if cred is None:
        return None
    if cred.env is not None:
        value = environ.get(cred.env)
        if not value:
            raise CredentialError(f"upstream {upstream.name}: environment variable {cred.env} "
                                  "is not set")
    else:
        assert cred.file is not None  # the config schema requires env or file
        try:
            value = cred.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"upstream {upstream.name}: cannot read credential file "
                                  f"{cred.file}: {exc.strerror}") from exc
    return cred.header, cred.prefix + value


class Upstreams:
    """Owns the upstream connection pools; create in the runtime, `start`, then `close`."""

    def __init__(self, upstreams: Mapping[str, Upstream], environ: Mapping[str, str],
                 max_response_bytes: int) -> None:
        self._upstreams = upstreams
        self._credentials = {name: read_credential(up, environ)
                             for name, up in upstreams.items()}
        self._max_response = max_response_bytes
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def knows(self, upstream: str) -> bool:
        return upstream in self._upstreams

    def credential_header(self, upstream: str) -> str | None:
        """The name of the header the credential of `upstream` goes in (never its value)."""
        cred = self._credentials.get(upstream)
        return None if cred is None else cred[0]

    async def start(self) -> None:
        # One pool per upstream, so a slow upstream can exhaust only its own connections.
        for name, up in self._upstreams.items():
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=up.max_connections,
                                               keepalive_timeout=KEEPALIVE_S),
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=NO_DEFAULT_HEADERS)
            # SECURITY: aiohttp resends an idempotent-method request (GET, PUT, DELETE…)
            # once when its connection breaks, and the upstream may already have run it:
            # one decided call would run twice, and a failed resend would look unsent. The
            # gateway sends each call once. (No public switch; aiohttp is pinned to a
            # minor release, and tests/upstreams/test_client.py fails if this stops working.)
            session._retry_connection = False
            self._sessions[name] = session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def send(self, plan: OutboundPlan, timeout_ms: int) -> UpstreamResponse:
        """Send one planned call, once; raises `UpstreamError` (502) or `UpstreamTimeout`
        (504). `UpstreamUnreachable` (a 502 too) means nothing was sent: only a failure to
        open a new connection says so."""
        session = self._sessions[plan.upstream]  # KeyError: start() was not awaited
        headers = CIMultiDict(plan.headers)
        credential = self._credentials[plan.upstream]
        if credential is not None:
            # SECURITY: the spec cannot list the credential's header in `forward.headers`
            # (a load error), so this is the only value it can have.
            headers[credential[0]] = credential[1]
        url = URL(self._upstreams[plan.upstream].url + plan.target, encoded=True)
        start = time.perf_counter()
        try:
            async with session.request(
                    plan.method, url, headers=headers, data=plan.body or None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000)) as resp:
                body = await self._read(resp)
                out_headers = CIMultiDict(response_headers(resp.headers.items()))
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            # Raised before a byte of the request is written: the call did not run.
            raise UpstreamUnreachable(f"upstream {plan.upstream} could not be reached: "
                                      f"{type(exc).__name__}") from None
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {plan.upstream} did not answer within "
                                  f"{timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {plan.upstream} failed: "
                                f"{type(exc).__name__}") from None
        return UpstreamResponse(status, out_headers, body,
                                (time.perf_counter() - start) * 1000)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_response:
                raise UpstreamError(f"upstream response is larger than {self._max_response} "
                                    "bytes")
            chunks.append(chunk)
        return b"".join(chunks)
