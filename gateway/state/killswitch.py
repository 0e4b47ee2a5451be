"""Kill switches (DESIGN §6): stop calls by scope — `global`, `tenant:<t>`, `agent:<a>`,
`tool:<name>` — on every replica within a second.

The switches live in the state store; each replica keeps them in memory and reloads them
every `killswitch.poll_ms` (default 500 ms), so a switch set through any replica stops
calls on all of them within one poll. A switch set through this replica applies at once.
If the store cannot be read, the last known set stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import re

from gateway import tasks
from gateway.core.errors import GatewayError, InvalidArguments
from gateway.store.base import KillSwitch, StateStore

log = logging.getLogger("toolgate")
SCOPE = re.compile(r"^(global|tenant:\S+|agent:\S+|tool:[a-z0-9_.-]+)$")


def check_scope(scope: str) -> str:
    if not SCOPE.match(scope):
        raise InvalidArguments("scope must be global, tenant:<tenant>, agent:<agent> or "
                               "tool:<tool name>")
    return scope


class KillSwitches:
    def __init__(self, store: StateStore, poll_s: float) -> None:
        self._store = store
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

    def remember(self, switch: KillSwitch | None, scope: str) -> None:
        if switch is None:
            self._active.pop(scope, None)
        else:
            self._active[scope] = switch

    async def refresh(self) -> None:
        self._active = {k.scope: k for k in await self._store.kill_list()}

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
