"""Forwarding to upstreams: one pooled `ClientSession`, credentials injected, nothing leaked.

What goes upstream:
- the method, the spec's `forward.path` with the path parameters encoded, the query string
  and the body exactly as the agent sent them;
- the agent's headers minus hop-by-hop headers, minus every credential the agent holds
  (`Authorization`, `Proxy-Authorization`, `Cookie`, and the header the gateway injects), minus
  forwarding headers it could forge; plus `X-Forwarded-For`/`-Proto`/`-Host`, `X-Request-Id`,
  `Idempotency-Key`, and the upstream credential from its env var or file.
`traceparent`/`tracestate` pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.core.errors import UpstreamError, UpstreamTimeout
from gateway.store.base import StoredCall

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# SECURITY: the agent's own credentials and anything it could use to impersonate the
# gateway's view of the request never reach an upstream.
STRIPPED_REQUEST = HOP_BY_HOP | frozenset({
    "authorization", "cookie", "host", "content-length", "expect", "accept-encoding",
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
    "idempotency-key",
    # Headers that some frameworks and proxies honour to change the method or the path:
    # the tool's method and path are the spec's, never the agent's.
    "x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
    "x-original-url", "x-rewrite-url", "x-forwarded-path", "x-forwarded-prefix",
    "x-forwarded-uri", "x-original-uri",
})
STRIPPED_RESPONSE = HOP_BY_HOP | frozenset({
    "content-length", "content-encoding", "x-request-id", "x-toolgate-decision", "date",
    "server",
})


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
        assert cred.file is not None
        try:
            value = cred.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"upstream {upstream.name}: cannot read credential file "
                                  f"{cred.file}: {exc.strerror}") from exc
    return cred.header, cred.prefix + value


def forwarded_headers(agent_headers: Mapping[str, str],
                      extra_stripped: frozenset[str]) -> dict[str, str]:
    """The agent's headers that may go upstream (also what a queued call stores)."""
    connection_named = {h.strip().lower() for h in
                        agent_headers.get("Connection", "").split(",") if h.strip()}
    out: dict[str, str] = {}
    for name, value in agent_headers.items():
        low = name.lower()
        if low in STRIPPED_REQUEST or low in connection_named or low in extra_stripped:
            continue
        out[str(name)] = value  # multidict keys are istr, a str subclass
    return out


class Forwarder:
    """Owns the upstream connection pool; create in the app's cleanup context."""

    def __init__(self, upstreams: Mapping[str, Upstream], environ: Mapping[str, str],
                 max_response_bytes: int) -> None:
        self._upstreams = upstreams
        self._credentials = {name: read_credential(up, environ)
                             for name, up in upstreams.items()}
        self._max_response = max_response_bytes
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # SECURITY: a header of the agent's with the same name as an injected credential is
        # dropped, so the agent can never smuggle its own.
        self.credential_headers = frozenset(
            c[0].lower() for c in self._credentials.values() if c is not None)

    def knows(self, upstream: str) -> bool:
        return upstream in self._upstreams

    async def start(self) -> None:
        # One pool per upstream, so a slow upstream can exhaust only its own connections.
        for name, up in self._upstreams.items():
            self._sessions[name] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=up.max_connections),
                auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def send(self, call: StoredCall, *, request_id: str, client_ip: str,
                   host: str, scheme: str, idempotency_key: str | None,
                   timeout_ms: int) -> UpstreamResponse:
        """Send one call; raises `UpstreamError` (502) or `UpstreamTimeout` (504)."""
        session = self._sessions[call.upstream]  # KeyError: start() was not awaited
        upstream = self._upstreams[call.upstream]
        headers = CIMultiDict(call.headers)
        # The agent's own X-Forwarded-* were stripped: as a sidecar, the peer is the agent.
        headers["X-Forwarded-For"] = client_ip
        headers["X-Forwarded-Proto"] = scheme
        headers["X-Forwarded-Host"] = host
        headers["X-Request-Id"] = request_id
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        credential = self._credentials[call.upstream]
        if credential is not None:
            headers[credential[0]] = credential[1]
        url = URL(upstream.url + call.path + (f"?{call.query}" if call.query else ""),
                  encoded=True)
        start = time.perf_counter()
        try:
            async with session.request(
                    call.method, url, headers=headers, data=call.body or None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000)) as resp:
                body = await self._read(resp)
                out_headers = CIMultiDict(
                    (k, v) for k, v in resp.headers.items() if k.lower() not in STRIPPED_RESPONSE)
                status = resp.status
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {call.upstream} did not answer within "
                                  f"{timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {call.upstream} failed: "
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

