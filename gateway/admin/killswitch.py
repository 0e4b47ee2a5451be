"""The kill switch endpoints of the admin API (DESIGN §6, §8): list, set and clear.

They take the approver scope, as approvals do (`gateway.admin.api.operator`). A switch must
name something the gateway knows, or a typo would stop nothing
(`gateway.state.killswitch.check_target`): a tool of the loaded bundle; a tenant named in
`budgets.tenants` or with a trace in the state store (a held call, a run budget, an
idempotency key). An unknown tool or tenant is 422 `unknown_scope` unless the body says
`"force": true`; an agent with no held call in the store is set with a `warning`, since the
gateway keeps no list of agents. A scope that already has a switch is known.

Every refusal of an approver's request (a malformed scope, an unknown target, no such
switch, a store that cannot be read) is a `killswitch` record with event `refused`; a caller
without the approver scope is counted and rate-limited like any other
(`gateway.admin.refusals`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from gateway.admin.api import json_answer, operator, read_body, runtime_of, text_field
from gateway.audit import records
from gateway.auth import Principal
from gateway.core.errors import AuditUnavailable, GatewayError, InvalidArguments, NotFound
from gateway.runtime import Runtime
from gateway.state.killswitch import KillSwitch, check_scope, check_target


@contextlib.asynccontextmanager
async def _refusals(rt: Runtime, who: Principal, scope: Callable[[], object]
                    ) -> AsyncIterator[None]:
    """An approver's kill switch request refused: recorded (best effort: the refusal
    stands), then raised. `scope` is what the request named, as far as it was read."""
    try:
        yield
    except GatewayError as exc:
        with contextlib.suppress(AuditUnavailable):
            rt.audit.write("killswitch", records.killswitch_refusal(scope(), who, exc))
        raise


async def _known(rt: Runtime, scope: str) -> tuple[bool, list[str]]:
    """Whether the gateway knows what `scope` names, and the names it could have meant."""
    kind, _, name = scope.partition(":")
    switches = {k.scope for k in await rt.store.kill_list()}
    if kind == "global" or scope in switches:
        return True, []
    alike = [s.partition(":")[2] for s in switches if s.startswith(f"{kind}:")]
    if kind == "tool":
        tools = rt.bundles.current.tools
        return name in tools, sorted(tools)
    if kind == "tenant":
        tenants = rt.settings.budgets.tenants
        known = name in tenants or await rt.store.seen("tenant", name)
        return known, sorted({*tenants, *alike})
    return await rt.store.seen("agent", name), alike


async def list_killswitches(request: web.Request) -> web.StreamResponse:
    """The switches in force: scope, reason, who set it and since when."""
    rt = runtime_of(request)
    who = await operator(request, rt)
    async with _refusals(rt, who, lambda: None):
        switches = await rt.store.kill_list()
    return json_answer({"killswitches": [k.public() for k in switches]})


async def set_killswitch(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    who = await operator(request, rt)
    body: dict[str, Any] = {}
    async with _refusals(rt, who, lambda: body.get("scope")):
        body = await read_body(request, rt)
        scope = check_scope(body.get("scope"))
        reason = text_field(body, "reason", required=True) or ""
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidArguments("force must be true or false")
        known, candidates = await _known(rt, scope)
        warning = check_target(scope, known=known, candidates=candidates, force=force)
        actor = records.actor(who)

        def record(switch: KillSwitch) -> None:
            rt.audit.write("killswitch", records.killswitch("set", switch, actor, force=force,
                                                            warning=warning))

        switch = await rt.store.kill_set(scope, reason, actor, rt.clock.time(), record)
    rt.kills.remember(switch, scope)  # this replica at once; the others within a poll
    answer = switch.public()
    if warning is not None:
        answer["warning"] = warning
    return json_answer(answer)


async def clear_killswitch(request: web.Request) -> web.StreamResponse:
    """Revive: any well-formed scope, known or not (a tool removed since can be revived)."""
    rt = runtime_of(request)
    who = await operator(request, rt)
    given = request.match_info["scope"]
    async with _refusals(rt, who, lambda: given):
        scope = check_scope(given, set_before=True)  # one an earlier version took too
        actor = records.actor(who)
        switch = await rt.store.kill_clear(scope, rt.clock.time(), lambda cleared: rt.audit.write(
            "killswitch", records.killswitch("cleared", cleared, actor)))
        rt.kills.remember(None, scope)
        if switch is None:
            raise NotFound(f"no kill switch {scope}")
    return json_answer({**switch.public(), "cleared": True})
