"""Retention: what the state store keeps about finished work is forgotten, once a minute.

- Idempotency keys: answers are kept `idempotency.retention_hours` (24 by default, as
  Stripe does), then forgotten, so the key may be used again. Keys of held calls go with
  them once the held call is decided and as old.
- Run budgets: a run unused for `budgets.retention_hours` (24 by default) is forgotten,
  unless a call of it is held, approved or being sent (it counts against its own run).
  Run ids come from agents, so the table would otherwise grow without bound; a run that
  comes back after that long starts with a fresh budget (issue runs in tokens, short-lived).
"""

from __future__ import annotations

import asyncio
import logging

from gateway import tasks
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.store.base import StateStore

log = logging.getLogger("toolgate")
PURGE_INTERVAL_S = 60  # a DELETE a minute is plenty for a 24 h retention


class Retention:
    def __init__(self, store: StateStore, keys_s: float, runs_s: float,
                 clock: Clock) -> None:
        self._store = store
        self._keys = keys_s
        self._runs = runs_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def purge_once(self) -> tuple[int, int]:
        """(keys, runs) forgotten."""
        now = self._clock.time()
        return (await self._store.purge_keys(now - self._keys),
                await self._store.purge_runs(now - self._runs))

    async def _run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except GatewayError as exc:
                log.warning("retention: nothing purged this time: %s", exc.message)
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def close(self) -> None:
        await tasks.stop(self._task)
