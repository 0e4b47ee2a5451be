"""Stage `policy`: ask the policy engine, with the input document of DESIGN §2.2.

Reads: everything the earlier stages set (`gateway.core.policy_input`), the engine of the
call's bundle. Sets: `ctx.policy_input` (the document, built once: the decision record
carries exactly what the policy saw, redacted, for replay), `ctx.decision` (a parsed
`PolicyDecision`; malformed or undefined output is already deny/`policy_error`),
`ctx.policy_ms`. Refuses: 503 `policy_unavailable` when the engine cannot answer — unless
the operator set `fail_open`, in which case the call is allowed with reason `fail_open`
(and the audit record says so).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.core.decision import Action, PolicyDecision
from gateway.core.errors import PolicyUnavailable
from gateway.core.policy_input import input_document

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("toolgate")


async def policy(ctx: CallContext, rt: Runtime) -> None:
    ctx.policy_input = input_document(ctx)
    start = rt.clock.monotonic()
    try:
        ctx.decision = await ctx.bundle.engine.evaluate(ctx.policy_input)
    except PolicyUnavailable:
        if not rt.settings.fail_open:
            raise
        # fail_open is an explicit operator choice; every use of it is loud.
        log.warning("policy engine unavailable; allowing %s because fail_open is set",
                    ctx.call.facts.request_id)
        ctx.decision = PolicyDecision(Action.ALLOW, ("fail_open",))
    finally:
        elapsed = rt.clock.monotonic() - start
        ctx.policy_ms = elapsed * 1000
        rt.metrics.policy_latency.observe(elapsed)
