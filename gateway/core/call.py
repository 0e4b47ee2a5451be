"""The tool call: what an entrance hands the pipeline, in no protocol's terms.

An entrance (REST today, MCP next) reads its request, finds the tool and its arguments, and
produces a `ToolCall`; from there on every call is the same, whichever door it came in by.
`RequestFacts` are what is known about the request before the tool is: they are all a
refusal at the entrance (unknown route, bad JSON) has to go on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.bundle.specs import ToolSpec

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


class Entrance(StrEnum):
    REST = "rest"


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header, if it is well-formed."""
    m = _TRACEPARENT.match(traceparent or "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class RequestFacts:
    request_id: str                # also the audit record's decision_id
    entrance: Entrance
    method: str                    # as the agent sent it
    path: str                      # as the agent sent it: raw, still percent-encoded
    source_ip: str
    scheme: str
    received_at: float             # wall clock, seconds since the epoch
    started: float                 # monotonic clock, for latencies
    trace_id: str | None = None


@dataclass(frozen=True)
class ToolCall:
    facts: RequestFacts
    spec: ToolSpec
    args: Mapping[str, Any]        # the one JSON object the schema and the policy judge
    body: bytes                    # what the upstream receives, exactly
    path_params: Mapping[str, str]
    query: str                     # raw query string, forwarded as it is
    headers: Mapping[str, str]     # the agent's headers (case-insensitive); see the plan
    authorization: str | None      # the agent's credential, for `authenticate` only
    key_hint: str | None = None    # the Idempotency-Key the agent sent, unchecked
    run_hint: str | None = None    # the run id the agent sent (unsigned), unchecked
