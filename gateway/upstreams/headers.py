"""Which headers cross the gateway, in each direction.

Agent → upstream is an **allow-list** (DESIGN §3): content negotiation and trace context,
plus what a tool spec names in `forward.headers`. Everything else the agent sends — its
credentials, identity and forwarding headers it could forge (`X-Forwarded-User`,
`X-Real-IP`, `Forwarded`, …), method overrides, anything an upstream might trust — is
dropped, because a deny-list can never name every header some upstream honours. The
gateway then sets its own forwarding headers: `X-Forwarded-For` (the peer),
`X-Forwarded-Proto`, `X-Forwarded-Host` (its configured name, never the agent's `Host`),
`X-Request-Id`, and `Idempotency-Key` where the tool uses one. The credential is added at
send time (`gateway.upstreams.client`).

Upstream → agent drops hop-by-hop headers and what the gateway sets itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Forwarded for every tool, in this spelling.
ALWAYS_FORWARDED = ("Content-Type", "Accept", "Accept-Language", "traceparent", "tracestate")
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
# SECURITY: never forwarded from the agent, whatever a spec lists: credentials, framing,
# and what the gateway sets itself.
NEVER_FORWARDED = HOP_BY_HOP | frozenset({
    "authorization", "cookie", "host", "content-length", "content-encoding", "expect",
    "accept-encoding", "forwarded", "x-real-ip", "x-request-id", "idempotency-key",
})
NEVER_FORWARDED_PREFIXES = ("x-forwarded-",)
STRIPPED_RESPONSE = HOP_BY_HOP | frozenset({
    "content-length", "content-encoding", "x-request-id", "x-toolgate-decision", "date",
    "server",
})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110)
# Not text: control characters, and the lone surrogates that stand for bytes that were not
# UTF-8 (how the HTTP server decodes them).
_NOT_TEXT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


def refused_name(name: str) -> str | None:
    """Why a spec may not list `name` in `forward.headers`, or None if it may."""
    low = name.lower()
    if not _TOKEN.match(name):
        return f"{name!r} is not an HTTP header name"
    if low in NEVER_FORWARDED or low.startswith(NEVER_FORWARDED_PREFIXES):
        return f"{name!r} is never taken from the agent (credentials, framing, or set by " \
               "the gateway)"
    return None


def not_text(value: str) -> bool:
    """Whether a header value holds something other than text (see `_NOT_TEXT`)."""
    return _NOT_TEXT.search(value) is not None


def agent_headers(headers: Mapping[str, str], extra: Iterable[str]) -> dict[str, str]:
    """The agent's headers that go upstream: the allow-list, in its spelling. A header sent
    more than once is combined into one line (RFC 9110 §5.3)."""
    values: dict[str, list[str]] = {}
    seen: set[str] = set()
    getall = getattr(headers, "getall", None)
    for name in (*ALWAYS_FORWARDED, *extra):
        if name.lower() in seen:  # a spec may list one the allow-list has, in any case
            continue
        seen.add(name.lower())
        found = list(getall(name, ())) if getall is not None else (
            [headers[name]] if name in headers else [])
        if found:
            values[name] = found
    return {name: ", ".join(v) for name, v in values.items()}


def gateway_headers(*, peer: str, scheme: str, forwarded_host: str, request_id: str,
                    idempotency_key: str | None) -> dict[str, str]:
    """The forwarding headers the gateway sets on every call it sends."""
    out = {"X-Forwarded-For": peer, "X-Forwarded-Proto": scheme,
           "X-Forwarded-Host": forwarded_host, "X-Request-Id": request_id}
    if idempotency_key is not None:
        out["Idempotency-Key"] = idempotency_key
    return out


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers the agent gets."""
    return [(k, v) for k, v in headers if k.lower() not in STRIPPED_RESPONSE]
