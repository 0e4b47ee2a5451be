"""Background tasks the runtime owns (the approval sweeper, the kill-switch poll, webhook
delivery): started in the app's cleanup context, stopped the same way."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
