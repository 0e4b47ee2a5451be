"""Stage `plan`: the exact request the upstream will receive, fixed before the policy runs.

Reads: the call (tool, path parameters, query, body, the agent's headers), the checked
idempotency key, the configured `forwarded_host`. Sets: `ctx.plan`. Refuses: 400
`invalid_arguments` for a forwarded header whose value is not text (bytes that are not
UTF-8, or control characters): what an approver is shown must be what is sent.

The upstream path is the spec's `forward.path` with each parameter percent-encoded as one
segment — never the path the agent sent. The agent's headers go through the allow-list
(`gateway.upstreams.headers`): content negotiation, trace context, and the spec's
`forward.headers`; the gateway adds its own forwarding headers. A forwarded call is sent as
planned; a held call stores the plan, approvers see all of it, and it is sent as shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core.context import CallContext
from gateway.core.errors import InvalidArguments
from gateway.core.outbound import OutboundPlan
from gateway.upstreams.headers import agent_headers, gateway_headers, not_text

if TYPE_CHECKING:
    from gateway.runtime import Runtime


async def plan(ctx: CallContext, rt: Runtime) -> None:
    call, spec = ctx.call, ctx.call.spec
    facts = call.facts
    headers = agent_headers(call.headers, spec.forward_headers)
    for name, value in headers.items():
        if not_text(value):
            raise InvalidArguments(f"header {name} is not text (UTF-8, no control characters)")
    headers.update(gateway_headers(peer=facts.source_ip, scheme=facts.scheme,
                                   forwarded_host=rt.settings.forwarded_host,
                                   request_id=facts.request_id,
                                   idempotency_key=ctx.idempotency_key))
    ctx.plan = OutboundPlan(upstream=spec.upstream, method=spec.method,
                            path=spec.forward.render(dict(call.path_params)),
                            query=call.query, headers=headers, body=call.body)
