"""The tool call: what an entrance hands the pipeline, in no protocol's terms.

An entrance (REST today, MCP next) reads its request, finds the tool and its arguments, and
produces a `ToolCall`; from there on every call is the same, whichever door it came in by.
`RequestFacts` are what is known about the request before the tool is: they are all a
refusal at the entrance (unknown route, bad JSON) has to go on.

Every call has a trace id (the audit record's `trace_id`): the one of the agent's W3C
`traceparent` when that header is valid, else a new random one (`TraceParent`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from gateway.bundle.specs import ToolSpec
    from gateway.tracing import CallTrace

# W3C Trace Context, version 00 only: lowercase hex, exactly these lengths, nothing after.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class Entrance(StrEnum):
    REST = "rest"


class TraceParent(NamedTuple):
    """A valid W3C `traceparent`: the agent's trace, and its span the call continues.
    (A tuple: it is made for every call that sends one, and a tuple is made fastest.)"""

    trace_id: str                  # 32 lowercase hex, not all zero
    parent_id: str                 # 16 lowercase hex, not all zero
    flags: int                     # the trace-flags byte (bit 0: sampled)

    @classmethod
    def parse(cls, values: str | Sequence[str] | None) -> TraceParent | None:
        """The `traceparent` header's value(s), if they are exactly one valid version-00
        header. Anything else (absent, sent twice, another version, uppercase, all-zero
        ids, trailing bytes) is ignored, never an error: the call then starts a new trace."""
        if values is None:
            return None
        if not isinstance(values, str):
            if len(values) != 1:  # two parents cannot both be this call's parent
                return None
            values = values[0]
        m = _TRACEPARENT.fullmatch(values)
        if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
            return None
        return cls(m.group(1), m.group(2), int(m.group(3), 16))


def new_trace_id() -> str:
    """A random W3C trace id (never the invalid all-zero one)."""
    while (value := secrets.token_hex(16)) == _ZERO_TRACE:  # pragma: no cover - 2**-128
        pass
    return value


def trace_id(traceparent: str | Sequence[str] | None) -> str:
    """The call's trace id: the valid `traceparent`'s, else a new one."""
    parent = TraceParent.parse(traceparent)
    return new_trace_id() if parent is None else parent.trace_id


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
    trace_id: str = field(default_factory=new_trace_id)
    # The call's spans (`gateway.tracing`); the default records nothing. Its trace id is
    # `trace_id`: the entrance builds both from the same `traceparent`.
    trace: CallTrace | None = None


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
