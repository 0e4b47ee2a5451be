"""The `forward` act: send the planned call, record its outcome, settle its key and budget.

The plan is sent as it is (`gateway.upstreams.client`). Whatever happens once the request
may have reached the upstream — an answer of any status, a broken answer, a timeout — is the
call's final answer: it is stored under the idempotency key (5xx and the gateway's own
502/504 included, as Stripe does), the outcome record is written, and the call keeps its
reservation, spend included: the upstream may have acted (DESIGN §6). Only a call the
gateway knows was never executed — the upstream could not be connected to, or the decision
record could not be written — gives back its key and its reservation (`withdraw`), so the
agent may simply try again.

A call cancelled while its request is out — the drain window ended with it in flight
(`gateway.listener.drain.cut`) — may have run too: its key is settled with a 504
`upstream_timeout` saying the gateway stopped before the upstream answered, so the agent's
retry with the same key is answered that and never sent again (DESIGN §4), and its spend
stays reserved (§6). Nothing awaits between the `commit` stage and the send, so a forwarded
call cannot be cancelled after its key is taken and before its request starts. A store
change that settles or gives back a key runs as the runtime's background work, which a
cancellation cannot stop half way (`_to_the_end`); a cancelled call waits for it at most
`CUT_WAIT_S`, since the store may be slow while the gateway stops, and the drain gives
what is left the rest of its time.

When tracing is on, the request to the upstream is a child span of the call's
(`gateway.tracing`), failed with the gateway's code (502/504) or the upstream's 4xx/5xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from gateway.act.answers import Reply, error_reply
from gateway.audit import records
from gateway.audit.call import CallAudit
from gateway.core.context import CallContext
from gateway.core.decision import Action
from gateway.core.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from gateway.state.idempotency import Answer

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.state.budgets import Reservation
    from gateway.state.idempotency import KeyClaim
    from gateway.upstreams.client import UpstreamResponse

log = logging.getLogger("toolgate")
SETTLE_ATTEMPTS = 10  # about a minute, well inside the claim's lease
# How long a cancelled call waits for its key to be settled or given back: well inside the
# drain's `CANCEL_GRACE_S`, which waits for every cut call to unwind and record its outcome.
CUT_WAIT_S = 0.5
CUT_MESSAGE = ("the gateway stopped before the upstream answered; the call may have run: "
               "check the upstream before making it again with a new Idempotency-Key")


async def forward(ctx: CallContext, rt: Runtime, audit: CallAudit) -> Reply:
    spec, facts = ctx.call.spec, ctx.call.facts
    audit.expect_outcome()
    try:
        resp = await _send(ctx, rt)
    except asyncio.CancelledError:
        # SECURITY: cut with its request out (the drain): the upstream may have acted, so
        # the key gets a final answer — a retry must never send the call again.
        cut = UpstreamTimeout(CUT_MESSAGE)
        rt.metrics.upstream.labels(spec.name, str(cut.code)).inc()
        audit.outcome(records.outcome(
            error="cancelled", status=cut.status, sent=True,
            total_s=rt.clock.monotonic() - facts.started, policy_ms=round(ctx.policy_ms, 3)))
        reply = error_reply(cut, facts.request_id, str(Action.ALLOW))
        await settle(ctx, rt, Answer(reply.status, reply.content_type, reply.body),
                     wait_s=CUT_WAIT_S)
        raise
    except GatewayError as exc:
        rt.metrics.upstream.labels(spec.name, str(exc.code)).inc()
        unsent = isinstance(exc, UpstreamUnreachable)
        audit.outcome(records.outcome(
            error=str(exc.code), status=exc.status, sent=not unsent,
            total_s=rt.clock.monotonic() - facts.started, policy_ms=round(ctx.policy_ms, 3)))
        reply = error_reply(exc, facts.request_id, str(Action.ALLOW))
        if unsent:
            await withdraw(ctx, rt)
        else:
            await settle(ctx, rt, Answer(reply.status, reply.content_type, reply.body))
        return reply
    output_valid = None
    if spec.output_validator is not None and 200 <= resp.status < 300:
        output_valid = _output_valid(spec.output_validator, resp.body)
        rt.metrics.output_schema.labels(spec.name, "pass" if output_valid else "fail").inc()
    total = rt.clock.monotonic() - facts.started
    m = rt.metrics
    m.upstream.labels(spec.name, f"{resp.status // 100}xx").inc()
    m.upstream_latency.labels(spec.name).observe(resp.latency_ms / 1000)
    m.overhead.labels(spec.name).observe(max(0.0, total - resp.latency_ms / 1000))
    audit.outcome(records.outcome(
        status=resp.status, upstream_status=resp.status, output_valid=output_valid,
        total_s=total, policy_ms=round(ctx.policy_ms, 3), upstream_ms=resp.latency_ms))
    content_type = resp.headers.pop("Content-Type", None)
    await settle(ctx, rt, Answer(resp.status, content_type, resp.body))
    return Reply(resp.status, resp.body, str(Action.ALLOW), resp.headers, content_type)


async def _send(ctx: CallContext, rt: Runtime) -> UpstreamResponse:
    """Send the plan; when tracing is on, inside the call's upstream span."""
    spec, trace = ctx.call.spec, ctx.call.facts.trace
    if trace is None:
        return await rt.upstreams.send(ctx.plan, spec.timeout_ms)
    with trace.upstream(spec) as span:
        resp = await rt.upstreams.send(ctx.plan, spec.timeout_ms)
        span.status(resp.status)
        return resp


def _output_valid(validator: Any, body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return bool(validator.is_valid(value))


async def settle(ctx: CallContext, rt: Runtime, answer: Answer, *,
                 wait_s: float | None = None) -> None:
    """Store the answer under the key. The answer is already known, so neither a store
    error nor a cancellation may lose it (the key would later be taken over and the call
    sent again): a failed store is retried in the background while the agent gets its
    answer, and a cancelled call leaves the store to finish (`_to_the_end`; `wait_s`: how
    long to wait for it, for a call being cancelled already)."""
    if not ctx.committed or ctx.claim is None:
        return
    request_id = ctx.call.facts.request_id
    await _to_the_end(rt, _settle(rt, ctx.claim, answer, request_id),
                      f"settle {request_id}", wait_s)


async def _settle(rt: Runtime, claim: KeyClaim, answer: Answer, request_id: str) -> None:
    async def store() -> bool:
        try:
            await rt.store.settle(claim, answer, rt.clock.time())
        except GatewayError as exc:
            log.warning("settling %s failed: %s", request_id, exc.message)
            return False
        return True

    async def retry() -> None:
        delay = 0.2
        for _ in range(SETTLE_ATTEMPTS):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if await store():
                return
        log.critical("the answer of %s could not be stored under its idempotency key",
                     request_id)

    if not await store():
        rt.background.spawn(retry(), name=f"settle {request_id}")


async def withdraw(ctx: CallContext, rt: Runtime) -> None:
    """Give back the key and the reservation of a committed call that was not sent."""
    if not ctx.committed:
        return
    ctx.committed = False
    request_id = ctx.call.facts.request_id
    await _to_the_end(rt, _undo(rt, ctx.claim, ctx.reservation, request_id),
                      f"withdraw {request_id}")


async def _undo(rt: Runtime, claim: KeyClaim | None, reservation: Reservation | None,
                request_id: str) -> None:
    try:
        # Never sent: neither its spend nor its call counts.
        await rt.store.undo_forward(claim, reservation, rt.clock.time())
    except GatewayError:
        # The claim's lease runs out on its own; the reservation stays spent (fail closed).
        log.warning("could not undo the reservation of %s", request_id)


async def _to_the_end(rt: Runtime, change: Coroutine[Any, Any, None], name: str,
                      wait_s: float | None = None) -> None:
    """Run `change` (of a call's key in the store) as the runtime's background work, and
    wait for it — at most `wait_s` when given. A cancellation of the call does not reach
    it: it runs once, to the end — a store change abandoned half way may never be made (the
    SQLite store drops a change whose caller has gone), and one made again may give a
    reservation back twice. A call cancelled while it waits waits at most `CUT_WAIT_S`
    more, then goes on being cancelled; the change goes on without it
    (`gateway.tasks.Background.close` waits for it)."""
    task = rt.background.spawn(change, name)
    if wait_s is not None:
        await asyncio.wait({task}, timeout=wait_s)
        return
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task}, timeout=CUT_WAIT_S)
        raise
