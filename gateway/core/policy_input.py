"""The policy's input document (DESIGN §2.2), built from what the pipeline established."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from gateway.bundle.specs import ToolSpec
from gateway.core.canonical import canonical_json, rfc3339_precise
from gateway.state.budgets import Usage

if TYPE_CHECKING:   # only a type here: context imports the bundle, which imports this
    from gateway.core.context import CallContext


def tool_input(spec: ToolSpec) -> dict[str, Any]:
    """The input's `tool`: what the spec says of the tool."""
    return {"name": spec.name, "tier": str(spec.tier), "scopes": list(spec.scopes),
            "upstream": spec.upstream, "mode": str(spec.mode)}


def input_document(ctx: CallContext) -> dict[str, Any]:
    spec, call = ctx.call.spec, ctx.call
    facts = call.facts
    return {
        "tool": tool_input(spec),
        "args": dict(call.args),
        "principal": ctx.principal.as_input(),
        "run": {"id": ctx.run_id, **(ctx.usage or Usage()).as_input()},
        "request": {
            "id": facts.request_id, "method": facts.method, "path": facts.path,
            "idempotency_key": ctx.idempotency_key,
            "time": rfc3339_precise(facts.received_at),
            "source_ip": facts.source_ip,
            "entrance": str(facts.entrance),
            "bucket": bucket(spec.name, ctx.principal.tenant, ctx.principal.sub,
                             ctx.idempotency_key or facts.request_id),
        },
    }


def bucket(tool: str, tenant: str | None, sub: str, call: str) -> int:
    """0-99, the same for the same call: a policy ramps autonomy by percentage with it
    (`input.request.bucket < 10`), a retry with the same Idempotency-Key lands where the
    first try did, and a replay of the record sees the same number."""
    digest = hashlib.sha256(canonical_json([tool, tenant, sub, call])).digest()
    return int.from_bytes(digest[:8], "big") % 100
