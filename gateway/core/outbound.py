"""The outbound plan: the exact request an upstream will receive for a call.

It is planned from the `ToolCall` before the policy runs (stage `plan`), stored with a held
call, shown in full to approvers, and sent as it is: what executes is byte for byte what was
shown. Only three things are added at send time, none of which an approver needs to judge:
`Host` and `Content-Length` (HTTP framing, from the upstream URL and the body) and the
upstream credential (a secret; the view names its header, never its value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.canonical import canonical_json


@dataclass(frozen=True)
class OutboundPlan:
    upstream: str                  # a name under `upstreams:` in the config
    method: str
    path: str                      # raw upstream path, parameters already percent-encoded
    query: str                     # raw query string, without "?"
    headers: Mapping[str, str]     # every header sent, except Host, Content-Length, credential
    body: bytes

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")

    def digest(self) -> str:
        """SHA-256 over every byte of the plan; checked again just before a held call is
        sent, so a stored call changed behind the gateway's back is never sent."""
        h = hashlib.sha256()
        for part in (self.upstream, self.method, self.path, self.query):
            h.update(part.encode() + b"\0")
        h.update(canonical_json(dict(self.headers)) + b"\0")
        h.update(self.body)
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        """Everything but the body (stored as bytes beside it)."""
        return {"upstream": self.upstream, "method": self.method, "path": self.path,
                "query": self.query, "headers": dict(self.headers)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any], body: bytes) -> OutboundPlan:
        return cls(upstream=str(value["upstream"]), method=str(value["method"]),
                   path=str(value["path"]), query=str(value["query"]),
                   headers={str(k): str(v) for k, v in value["headers"].items()}, body=body)

    def view(self, credential_header: str | None) -> dict[str, Any]:
        """What an approver is shown: all of the plan, the body as the text it is."""
        return {**self.to_json(), "body": self.body.decode("utf-8", "replace"),
                "credential_header": credential_header}
