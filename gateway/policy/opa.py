"""The `opa` engine: decisions from an OPA server's Data API (DESIGN §2.2).

Each call is one `POST /v1/data/<decision path>` with `{"input": …}` through
opa-python-client's async client, on one kept-alive connection pool, bounded by
`policy.timeout_ms`. The client's own retries are off: a retry would spend the call's
time budget twice, and the gateway fails closed instead.

What OPA answers maps onto the contract as the embedded engine's does:
- a decision → parsed like any other (`PolicyDecision.parse`; malformed → deny/`policy_error`);
- no `result` (the rule or package is undefined) → deny/`policy_error`;
- HTTP 500 with OPA's error body (an evaluation error: conflicting rule values, a builtin
  error) → deny/`policy_error`, like the embedded engine's evaluation errors;
- no answer in time, a refused or reset connection, any other status, an answer that is
  not OPA's JSON object → `PolicyUnavailable` (503 `policy_unavailable`).

Each answer is asked with `provenance=true`; the revision OPA reports for its bundles
travels with the decision and is the record's `policy_revision`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient  # type: ignore[import-untyped]

from gateway.core.decision import PolicyDecision
from gateway.core.errors import PolicyUnavailable

log = logging.getLogger("toolgate")
UNKNOWN_REVISION = "opa:unknown"


def decision_path(query: str) -> str:
    """`data.toolgate.decision` → `toolgate/decision` (the Data API's path)."""
    if not query.startswith("data.") or not all(
            part.isidentifier() for part in query.removeprefix("data.").split(".")):
        raise ValueError(f"policy.query must be data.<package>.<rule>, got {query!r}")
    return query.removeprefix("data.").replace(".", "/")


def server_address(url: str) -> tuple[bool, str, int]:
    """(TLS, host, port) of `policy.opa_url`; the Data API lives at its root."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"policy.opa_url must be http(s)://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("policy.opa_url takes no path, query or credentials (the Data "
                         f"API is at /v1/data on the server), got {url!r}")
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


class OpaEngine:
    """`PolicyEngine` asking an OPA server. Bound to no thread; the client session is
    opened on the event loop at the first call."""

    def __init__(self, url: str, query: str, timeout_ms: int) -> None:
        self.url = url.rstrip("/")
        self._path = decision_path(query)
        self._query = query
        self._timeout = timeout_ms / 1000
        tls, host, port = server_address(url)
        self._client = AsyncOpaClient(host=host, port=port, ssl=tls, retries=0,
                                      timeout=self._timeout)
        self._opened = False
        self._revision = UNKNOWN_REVISION

    @property
    def revision(self) -> str:
        """The revision of OPA's last answer (`opa:unknown` before the first)."""
        return self._revision

    async def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        if not self._opened:
            await self._client.__aenter__()
            self._opened = True
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._client.query_rule(
                    input_data=input_doc, package_path=self._path,
                    query_params={"provenance": "true"})
        except TimeoutError:
            raise PolicyUnavailable(f"OPA at {self.url} did not answer within "
                                    f"{self._timeout * 1000:.0f} ms") from None
        except (aiohttp.ContentTypeError, ValueError):
            raise PolicyUnavailable(f"OPA at {self.url} gave an answer that is not a Data "
                                    "API response") from None
        except aiohttp.ClientResponseError as exc:
            if exc.status == 500:   # OPA evaluated and failed: the policy's error
                return PolicyDecision.error(f"OPA evaluation error: {exc.message}"[:300])
            raise PolicyUnavailable(f"OPA at {self.url} answered HTTP {exc.status}") from None
        except aiohttp.ClientError as exc:
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
            await self._client.close_connection()
            self._opened = False
