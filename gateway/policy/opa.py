"""The `opa` engine: decisions from an OPA server's Data API (DESIGN §2.2).

Each call is one `POST /v1/data/<decision path>` with `{"input": …}` through
opa-python-client's async client, on one kept-alive connection pool, bounded by
`policy.timeout_ms`. The client's own retries are off: a retry would spend the call's
time budget twice, and the gateway fails closed instead. Redirects are not followed (a
redirect would carry the input, unredacted, wherever it points).

The input is sent as the embedded engine sees it (through orjson: a NaN is null) and with
`strict-builtin-errors=true`, so a builtin that fails (`to_number("x")`) is an error, as
it is in the embedded engine, not a silently undefined rule. What OPA answers maps onto
the contract as the embedded engine's does:
- a decision → parsed like any other (`PolicyDecision.parse`; malformed → deny/`policy_error`);
- no `result` (the rule or package is undefined) → deny/`policy_error`;
- HTTP 4xx or 500, OPA's error (an evaluation error, conflicting rule values, an input it
  refuses) → deny/`policy_error` with OPA's message: OPA answered, and no answer from OPA
  may become an allow under `fail_open`;
- no answer in time, a refused or reset connection, a redirect or any other status, an
  answer that is not a Data API object → `PolicyUnavailable` (503 `policy_unavailable`).

Each answer is asked with `provenance=true`; the revision OPA reports for its bundles
travels with the decision and is the record's `policy_revision`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from opa_client import AsyncOpaClient  # type: ignore[import-untyped]

from gateway.core.decision import PolicyDecision
from gateway.core.errors import PolicyUnavailable

log = logging.getLogger("toolgate")
UNKNOWN_REVISION = "opa:unknown"
MAX_ERROR_BYTES = 4096
QUERY = {"provenance": "true", "strict-builtin-errors": "true"}


def decision_path(query: str) -> str:
    """`data.toolgate.decision` → `toolgate/decision` (the Data API's path); the config's
    schema has already checked the query's shape."""
    return query.removeprefix("data.").replace(".", "/")


def server_address(url: str) -> tuple[bool, str, int]:
    """(TLS, host, port) of `policy.opa_url`; the Data API lives at its root."""
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 (raises for a port that is not a number from 0 to 65535)
    except ValueError as exc:   # urllib's own words name neither the key nor the fix
        raise ValueError(f"policy.opa_url must be http(s)://host:port, got {url!r} ({exc})"
                         ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"policy.opa_url must be http(s)://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("policy.opa_url takes no path, query or credentials (the Data "
                         f"API is at /v1/data on the server), got {url!r}")
    if ":" in parts.hostname:
        raise ValueError("policy.opa_url: the OPA client cannot address an IPv6 literal; "
                         f"use a name or an IPv4 address, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme == "https", parts.hostname, port


def bundle_revision(provenance: Any) -> str | None:
    """The revision OPA reports: one bundle's revision, `name=rev,…` for several, or
    OPA's own when no bundle names one (`opa:unbundled`)."""
    if not isinstance(provenance, Mapping):
        return None
    bundles = provenance.get("bundles")
    if isinstance(bundles, Mapping) and bundles:
        revisions = {str(name): str(b.get("revision", "")) if isinstance(b, Mapping) else ""
                     for name, b in bundles.items()}
        if len(revisions) == 1:
            return next(iter(revisions.values())) or "opa:unrevised"
        return ",".join(f"{name}={rev}" for name, rev in sorted(revisions.items()))
    legacy = provenance.get("revision")
    return str(legacy) if legacy else "opa:unbundled"


class OpaRefused(Exception):
    """OPA answered with an error of its own (4xx or 500): the policy could not decide."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"policy evaluation error (OPA): {message}" if status == 500
                         else f"OPA refused the query (HTTP {status}): {message}")
        self.status = status


class OpaUnreachable(Exception):
    """An answer that is not OPA's: a redirect, or a status no OPA gives for a query."""


class _Client(AsyncOpaClient):  # type: ignore[misc]
    """The library's client with two things it does not offer: redirects are not followed,
    and OPA's error body is read (the library raises before anyone can read it)."""

    @asynccontextmanager
    async def _request(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[Any]:
        async with super()._request(method, url, allow_redirects=False,
                                    **kwargs) as response:
            if 400 <= response.status <= 500 and response.status not in (404, 408, 429):
                text = (await response.content.read(MAX_ERROR_BYTES)).decode(errors="replace")
                try:
                    message = str(orjson.loads(text).get("message", text))
                except (orjson.JSONDecodeError, AttributeError):
                    message = text
                raise OpaRefused(response.status, " ".join(message.split())[:300])
            if not 200 <= response.status < 300:
                raise OpaUnreachable(f"answered HTTP {response.status}")
            yield response


class OpaEngine:
    """`PolicyEngine` asking an OPA server. Bound to no thread; the client session is
    opened on the event loop at the first call."""

    def __init__(self, url: str, query: str, timeout_ms: int) -> None:
        self.url = url.rstrip("/")
        self._path = decision_path(query)
        self._query = query
        self._timeout = timeout_ms / 1000
        tls, host, port = server_address(url)
        self._client = _Client(host=host, port=port, ssl=tls, retries=0,
                               timeout=self._timeout)
        self._opened = False
        self._revision = UNKNOWN_REVISION

    @property
    def revision(self) -> str:
        """The revision of OPA's last answer (`opa:unknown` before the first)."""
        return self._revision

    async def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        # The document as the embedded engine would see it (orjson: NaN is null).
        document = orjson.loads(orjson.dumps(input_doc))
        try:
            async with asyncio.timeout(self._timeout):
                if not self._opened:   # opens the session; it never waits in between
                    await self._client.__aenter__()
                    self._opened = True
                answer = await self._client.query_rule(
                    input_data=document, package_path=self._path, query_params=QUERY)
        except OpaRefused as exc:
            return PolicyDecision.error(str(exc))
        except TimeoutError:
            raise PolicyUnavailable(f"OPA at {self.url} did not answer within "
                                    f"{self._timeout * 1000:.0f} ms") from None
        except OpaUnreachable as exc:
            raise PolicyUnavailable(f"OPA at {self.url} {exc}") from None
        except (aiohttp.ContentTypeError, ValueError, RecursionError):
            raise PolicyUnavailable(f"OPA at {self.url} gave an answer that is not a Data "
                                    "API response") from None
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            # RuntimeError: the session closed under the call (the gateway is stopping).
            raise PolicyUnavailable(f"OPA at {self.url} cannot be reached: "
                                    f"{type(exc).__name__}") from None
        return self._decision(answer)

    def _decision(self, answer: Any) -> PolicyDecision:
        if not isinstance(answer, dict):
            raise PolicyUnavailable(f"OPA at {self.url} gave an answer that is not a Data "
                                    "API response")
        revision = bundle_revision(answer.get("provenance"))
        if revision is not None:
            self._revision = revision
        decision = (PolicyDecision.parse(answer["result"]) if "result" in answer
                    else PolicyDecision.error(f"{self._query} is undefined"))
        return dataclasses.replace(decision, revision=revision or self._revision)

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._client.close_connection()
