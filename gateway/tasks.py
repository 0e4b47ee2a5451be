"""Background tasks the runtime owns (the approval sweeper, the kill-switch poll, webhook
delivery): started in the app's cleanup context, stopped the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# How long `close` waits by default, inside Kubernetes' 30 s grace with the drain before it;
# `gateway.serve` first gives the work what is left of the drain window.
CLOSE_WAIT_S = 5.0
CANCEL_WAIT_S = 1.0


class Background:
    """Work that must finish even though the request that started it has been answered
    (storing an answer under its idempotency key, say). `close` waits for it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Wait up to `timeout_s` for the work to finish, then cancel what is left (as a
        crash would end it) and give it `CANCEL_WAIT_S` to unwind."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, timeout_s))
        left = set(self._tasks)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=CANCEL_WAIT_S)
