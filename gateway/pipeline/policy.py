"""Stage `policy`: ask the policy engine, with the input document of DESIGN §2.2.

Reads: everything the earlier stages set. Sets: `ctx.policy` (a parsed `PolicyDecision`;
malformed or undefined output is already deny/`policy_error`), `ctx.policy_ms`. Refuses: 503
`policy_unavailable` when the engine cannot answer — unless the operator set `fail_open`,
in which case the call is allowed with reason `fail_open` (and the audit record says so).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from gateway.context import CallContext, Runtime
from gateway.core.decision import Action, PolicyDecision
from gateway.core.errors import PolicyUnavailable
from gateway.state.budgets import Usage

log = logging.getLogger("toolgate")


def input_document(ctx: CallContext) -> dict[str, Any]:
    spec, principal, call = ctx.spec, ctx.principal, ctx.call
    assert spec is not None and principal is not None
    return {
        "tool": {"name": spec.name, "tier": str(spec.tier), "scopes": list(spec.scopes),
                 "upstream": spec.upstream, "mode": str(spec.mode)},
        "args": ctx.args,
        "principal": principal.as_input(),
        "run": {"id": ctx.run_id, **(ctx.usage or Usage()).as_input()},
        "request": {
            "id": call.request_id, "method": call.method, "path": call.raw_path,
            "idempotency_key": ctx.idempotency_key,
            "time": datetime.fromtimestamp(call.received_at, UTC).isoformat()
                    .replace("+00:00", "Z"),
            "source_ip": call.source_ip,
        },
    }


async def policy(ctx: CallContext, rt: Runtime) -> None:
    start = time.perf_counter()
    try:
        ctx.policy = await rt.engine.evaluate(input_document(ctx))
    except PolicyUnavailable:
        if not rt.settings.fail_open:
            raise
        # fail_open is an explicit operator choice; every use of it is loud.
        log.warning("policy engine unavailable; allowing %s because fail_open is set",
                    ctx.call.request_id)
        ctx.policy = PolicyDecision(Action.ALLOW, ("fail_open",))
    finally:
        elapsed = time.perf_counter() - start
        ctx.policy_ms = elapsed * 1000
        rt.metrics.policy_latency.observe(elapsed)
