"""Draining a gateway process on SIGTERM/SIGINT (`gateway.serve` drives it).

1. At once: `Drain.begin()`. `/readyz` answers 503 `{"status": "draining"}`, and every
   response from then on, on both ports, carries `Connection: close` and ends its
   connection, so a client with a kept-alive connection opens its next one elsewhere.
2. For `shutdown.delay_s` the agent port still accepts new connections (a load balancer
   or Kubernetes' endpoints take a moment to stop sending them), then `drain` closes the
   listening socket: a new connection is refused. Connections waiting for a request are
   closed as soon as they are idle; calls in flight go on.
3. When every connection has closed, or at the end of the window (`shutdown.drain_s` after
   the delay), `cut` cancels what is left: each cancelled call's decision record is
   already written and its outcome is recorded as `cancelled`. A cut call whose request
   was out may have run: its idempotency key keeps a final 504 answer, so a retry is
   answered that and never sent again (`gateway.act.forward`); storing those answers gets
   `CANCEL_GRACE_S` after the cut even when the window is spent.

From `begin` on, nothing new is set going that the drain might cut: `approve` on the admin
port is refused (503, `gateway.admin.api`) and the approval sweeper starts and takes over
no call (`gateway.approvals.sweeper`, told through `Drain.when_draining`); calls already
being sent finish.

The admin port is drained the same way within the same window, once the agent port's calls
are done and none of its own requests is in progress (`quiet`): until then it keeps
accepting and answering — `/readyz` (503 `draining`), `/metrics`, and approvers whose
`approve` waits for the call it approved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest

from gateway.config import ShutdownSettings

if TYPE_CHECKING:
    from gateway.listener import Listener
    from gateway.tasks import Background

log = logging.getLogger("toolgate")

DRAIN_POLL_S = 0.05   # how often connections that became idle are looked for and closed
CANCEL_GRACE_S = 1.0  # how long cancelled calls have to record their outcome and unwind


class Drain:
    """Whether this gateway process is stopping. Set once (`begin`), never cleared."""

    def __init__(self) -> None:
        self.draining = False
        self._hooks: list[Callable[[], None]] = []

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        for hook in self._hooks:
            hook()

    def when_draining(self, hook: Callable[[], None]) -> None:
        """Call `hook` when the drain begins — at once if it has begun already."""
        self._hooks.append(hook)
        if self.draining:
            hook()

    async def on_response_prepare(self, request: BaseRequest,
                                  response: web.StreamResponse) -> None:
        """Every response while draining ends its connection (both apps' hook)."""
        if self.draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"


# The admin app's `Drain`, for `/readyz` (`gateway.admin.api.readyz`).
DRAIN = web.AppKey("drain", Drain)


async def drain(listener: Listener, deadline: float, hurry: asyncio.Event) -> int:
    """Stop accepting on `listener`, then close its connections as each becomes idle until
    none is left, the loop's clock reaches `deadline`, or `hurry` is set. Returns how many
    connections are still open (calls still in flight)."""
    loop = asyncio.get_running_loop()
    listener.stop_accepting()
    while True:
        for connection in listener.connections():
            if connection.idle:
                connection.force_close()
        left = deadline - loop.time()
        if not listener.open_connections or left <= 0 or hurry.is_set():
            return listener.open_connections
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(left, DRAIN_POLL_S))


async def quiet(listener: Listener, deadline: float, hurry: asyncio.Event) -> None:
    """Wait, `listener` still accepting, until none of its connections has a request in
    progress (or `deadline`, or `hurry`). The admin port's way into the drain: probes still
    get their `draining` answer while an approver's call waits for the call it approved."""
    loop = asyncio.get_running_loop()
    while (any(not c.idle for c in listener.connections()) and loop.time() < deadline
           and not hurry.is_set()):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(deadline - loop.time(), DRAIN_POLL_S))


async def cut(listener: Listener, grace_s: float = CANCEL_GRACE_S) -> int:
    """Cancel the calls still in flight on `listener` and close their connections; wait
    up to `grace_s` for them to unwind (and record their outcome). Returns how many."""
    connections = listener.connections()
    handlers = [task for c in connections if (task := c.handler) is not None
                and not task.done()]
    for task in handlers:
        task.cancel()
    if handlers:
        await asyncio.wait(handlers, timeout=grace_s)
    for connection in connections:
        connection.force_close()
    return len(connections)


async def stop_serving(shutdown: ShutdownSettings, draining: Drain, started: list[Listener],
                       hurry: asyncio.Event, background: Background | None) -> None:
    """The whole drain, port by port — the agent port first — inside one window of
    `shutdown.delay_s + shutdown.drain_s`; then the background work of calls already
    answered (storing an answer under its key) gets what is left of it, and is cancelled
    after that (`gateway.tasks.Background.close`)."""
    loop = asyncio.get_running_loop()
    delay_s, drain_s = shutdown.delay_s, shutdown.drain_s
    draining.begin()
    deadline = loop.time() + delay_s + drain_s
    log.info("stopping: /readyz answers 503 draining; %s, then calls in flight have up to "
             "%g s to finish", f"the agent port accepts for {delay_s:g} s more" if delay_s
             else "the agent port accepts no more connections", drain_s)
    if delay_s > 0 and started:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), delay_s)
    for index, listener in enumerate(started):   # the agent port, then the admin port
        if index:
            await quiet(listener, deadline, hurry)
        await drain(listener, deadline, hurry)
    cancelled = 0
    if any(listener.open_connections for listener in started):
        for listener in started:
            cancelled += await cut(listener)
        log.warning("the drain window ended with %d connections still open: their calls "
                    "were cancelled (outcome records: cancelled)", cancelled)
    if background is not None:
        # The cut calls' answers are being stored under their keys: they get a moment even
        # when the window is spent, or a retry could find its key free and send it again.
        await background.close(max(deadline - loop.time(),
                                   CANCEL_GRACE_S if cancelled else 0.0))
    log.info("drained; closing the state store and the audit log")
