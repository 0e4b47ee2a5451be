"""Retention of idempotency keys: answers are kept `idempotency.retention_hours` (24 by
default, as Stripe does), then forgotten, once a minute, so the key may be used again.
Keys of held calls go with them once the held call is decided and as old."""

from __future__ import annotations

import asyncio
import logging

from gateway import tasks
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.store.base import StateStore

log = logging.getLogger("toolgate")
PURGE_INTERVAL_S = 60  # a DELETE a minute is plenty for a 24 h retention


class KeyRetention:
    def __init__(self, store: StateStore, retention_s: float, clock: Clock) -> None:
        self._store = store
        self._retention = retention_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def purge_once(self) -> int:
        return await self._store.purge_keys(self._clock.time() - self._retention)

    async def _run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except GatewayError as exc:
                log.warning("idempotency keys not purged: %s", exc.message)
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="key retention")

    async def close(self) -> None:
        await tasks.stop(self._task)
