"""Kill switches (DESIGN §6): stop calls by scope — `global`, `tenant:<t>`, `agent:<a>`,
`tool:<name>` — on every replica within a second.

The switches live in the state store; each replica keeps them in memory and reloads them
every `killswitch.poll_ms` (default 500 ms), so a switch set through any replica stops
calls on all of them within one poll. A switch set through this replica applies at once.
If the store cannot be read, the last known set stays in force. `refusal` is the one rule
both the pipeline's `killswitch` stage and the approval executor apply.

A scope's tenant or agent is a name a token could carry — printable, no whitespace, at
most `MAX_NAME` characters (`check_scope`): nothing else could be stopped, and a scope is
shown on terminals and in logs.
A switch must name something that exists, or a typo stops nothing (`check_target`): a tool
must be a loaded one and a tenant one the gateway knows, unless the operator forces it; an
agent the gateway has no trace of is set with a warning, since the gateway keeps no list of
agents (they are only a claim in their tokens).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import tasks
from gateway.core.canonical import rfc3339
from gateway.core.errors import GatewayError, InvalidArguments, Killed, UnknownScope, quote

log = logging.getLogger("toolgate")
MAX_SCOPE = 2000
SCOPE = re.compile(r"global|tenant:\S+|agent:\S+|tool:[a-z0-9_.-]+")
# The longest tenant or agent name a token can carry (`gateway.auth.MAX_NAME`).
MAX_NAME = 1024
MAX_NAMED = 50   # known names an answer lists at most


@dataclass(frozen=True)
class KillSwitch:
    scope: str                     # global | tenant:<t> | agent:<a> | tool:<name>
    reason: str
    actor: Mapping[str, Any]
    created_at: float

    def public(self) -> dict[str, Any]:
        return {"scope": self.scope, "reason": self.reason, "actor": dict(self.actor),
                "since": rfc3339(self.created_at)}


def check_scope(scope: object, *, set_before: bool = False) -> str:
    """A scope exactly as given: it is a name, not text, so it is not stripped, and it must
    match whole (`fullmatch`: a `$` would let a final newline through); else 400.

    A tenant or agent must also be a name a token can carry — printable (no control
    character, terminal escape, invisible format character or lone surrogate) and at most
    `MAX_NAME` long, as `gateway.auth` requires of a token's claims — else `UnknownScope`
    (422): a switch for it could stop nothing, so not even `force` sets it. (The shape is
    what the admin API's OpenAPI document spells as a pattern; printable is not expressible
    there, hence a refusal of its own.) `set_before`: to revive a switch, which an earlier
    version may have set with such a name."""
    if not (isinstance(scope, str) and len(scope) <= MAX_SCOPE and SCOPE.fullmatch(scope)):
        raise InvalidArguments("scope must be global, tenant:<tenant>, agent:<agent> or "
                               "tool:<tool name>")
    kind, _, name = scope.partition(":")
    # SECURITY: `\S` lets ESC and other controls through, which would reach the terminals
    # and logs a scope is shown on.
    if (kind in ("tenant", "agent") and not set_before
            and not (len(name) <= MAX_NAME and name.isprintable())):
        raise UnknownScope(f"no token can carry the {kind} {quote(name)}: names are printable "
                           f"and at most {MAX_NAME} characters, so a switch for it would stop "
                           "nothing, and force does not set it", forceable=False)
    return scope


def check_target(scope: str, *, known: bool, candidates: Collection[str],
                 force: bool) -> str | None:
    """The rule for what a switch names (`scope`, already well-formed): `known` is whether
    its tool is loaded, its tenant configured or seen, its agent seen; `candidates` are the
    names to suggest. An unknown tool or tenant raises `UnknownScope` (422) unless `force`;
    an unknown agent is allowed, and the warning to show is returned."""
    kind, _, name = scope.partition(":")
    if kind == "global" or known or force:
        return None
    close = difflib.get_close_matches(name, list(candidates), n=3)
    hint = f"; did you mean {', '.join(f'{kind}:{c}' for c in close)}?" if close else ""
    if kind == "agent":
        return (f"no held call in the state store was made by agent {quote(name)}, so the switch "
                f"may stop nothing{hint} (the gateway keeps no list of agents; "
                f"`revive` clears it)")
    if kind == "tool":
        named = sorted(candidates)
        listed = ", ".join(named[:MAX_NAMED]) + (", …" if len(named) > MAX_NAMED else "")
        raise UnknownScope(f"no tool {quote(name)} is loaded{hint} (loaded: {listed or 'none'}); "
                           "a switch for it would stop nothing: check the name, or force it",
                           known=named[:MAX_NAMED])
    raise UnknownScope(f"tenant {quote(name)} is not in budgets.tenants and has no held call, run "
                       f"budget or idempotency key in the state store{hint}; a switch for it "
                       "may stop nothing: check the name, or force it",
                       configured=sorted(candidates)[:MAX_NAMED])


class KillSwitches:
    """This replica's view of the switches; `load` reads them from the store."""

    def __init__(self, load: Callable[[], Awaitable[list[KillSwitch]]], poll_s: float) -> None:
        self._load = load
        self._poll = poll_s
        self._active: dict[str, KillSwitch] = {}
        self._task: asyncio.Task[None] | None = None

    def matching(self, tenant: str | None, agent: str | None,
                 tool: str | None) -> KillSwitch | None:
        """The switch that stops this call, if any (most general first)."""
        if not self._active:
            return None
        for scope in ("global", f"tenant:{tenant}" if tenant else None,
                      f"agent:{agent}" if agent else None, f"tool:{tool}" if tool else None):
            if scope is not None and scope in self._active:
                return self._active[scope]
        return None

    def refusal(self, tenant: str | None, agent: str | None, tool: str) -> Killed | None:
        """The 403 `killed` a call by this tenant and agent to this tool gets, if any."""
        switch = self.matching(tenant, agent, tool)
        if switch is None:
            return None
        return Killed(f"calls are stopped by the kill switch {switch.scope}: {switch.reason}",
                      scope=switch.scope, reasons=[f"killed: {switch.scope}: {switch.reason}"],
                      fallback="route_to_human")

    def remember(self, switch: KillSwitch | None, scope: str) -> None:
        if switch is None:
            self._active.pop(scope, None)
        else:
            self._active[scope] = switch

    async def refresh(self) -> None:
        self._active = {k.scope: k for k in await self._load()}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                await self.refresh()
            except GatewayError as exc:
                log.warning("kill switches not refreshed (last known set stays): %s",
                            exc.message)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="kill switches")

    async def close(self) -> None:
        await tasks.stop(self._task)
