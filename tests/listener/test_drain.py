"""`gateway.listener.drain` on real sockets: a `Listener` around a tiny aiohttp app on
127.0.0.1 with the drain's response hook, and clients holding requests in flight.

No test races a timer: a window that must not end is a minute long, one that must have
ended is already over (a deadline in the past), and every wait is on an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.config import Address, ShutdownSettings
from gateway.listener import Listener
from gateway.listener.drain import CANCEL_GRACE_S, Drain, cut, drain, quiet, stop_serving
from gateway.tasks import Background
from tests.listener.test_listener import LIMITS, WAIT_S, closed, refused, response

LONG_S = 60.0   # a window that must not end during a test


@dataclass
class Events:
    arrived: asyncio.Event = field(default_factory=asyncio.Event)    # /hold reached
    release: asyncio.Event = field(default_factory=asyncio.Event)    # /hold may answer
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)  # /hold was cut


@dataclass
class Site:
    listener: Listener
    draining: Drain
    events: Events
    port: int   # the listener's, kept: once it stops accepting it has no socket to ask

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def hold(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A request in flight: sent, reached the app, not answered until `release`."""
        self.events.arrived.clear()
        reader, writer = await self.connect()
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(self.events.arrived.wait(), WAIT_S)
        return reader, writer


def app_with(draining: Drain, events: Events) -> web.Application:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def hold(request: web.Request) -> web.StreamResponse:
        events.arrived.set()
        try:
            await events.release.wait()
        except asyncio.CancelledError:
            events.cancelled.set()
            raise
        return web.Response(text="held")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/hold", hold)
    app.on_response_prepare.append(draining.on_response_prepare)
    return app


@asynccontextmanager
async def site() -> AsyncIterator[Site]:
    draining, events = Drain(), Events()
    runner = web.AppRunner(app_with(draining, events), handle_signals=False,
                           shutdown_timeout=1)
    await runner.setup()
    listener = Listener(runner, Address("127.0.0.1", 0), LIMITS, refused)
    await listener.start()
    try:
        yield Site(listener, draining, events, listener.port)
    finally:
        events.release.set()
        await listener.stop()
        await runner.cleanup()


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              path: str = "/ok") -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return await response(reader)


async def test_while_draining_every_response_closes_its_connection() -> None:
    async with site() as s:
        reader, writer = await s.connect()
        status, headers, _ = await get(reader, writer)
        assert status == 200 and "connection" not in headers, "kept alive before the stop"
        s.draining.begin()
        status, headers, body = await get(reader, writer)
        assert (status, body) == (200, b"ok")
        assert headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_drain_refuses_new_connections_closes_idle_ones_and_waits_for_calls() -> None:
    async with site() as s:
        idle_reader, idle_writer = await s.connect()
        assert (await get(idle_reader, idle_writer))[0] == 200   # kept alive, now idle
        busy_reader, busy_writer = await s.hold()
        s.draining.begin()
        loop = asyncio.get_running_loop()
        drained = asyncio.create_task(drain(s.listener, loop.time() + LONG_S,
                                            asyncio.Event()))
        assert await closed(idle_reader), "the idle connection is closed at once"
        with pytest.raises(ConnectionRefusedError):
            await s.connect()
        assert not drained.done() and s.listener.open_connections == 1
        s.events.release.set()
        status, headers, body = await response(busy_reader)
        assert (status, body, headers["connection"]) == (200, b"held", "close")
        assert await asyncio.wait_for(drained, WAIT_S) == 0, "every connection closed"
        assert not s.events.cancelled.is_set()
        for writer in (idle_writer, busy_writer):
            writer.close()


async def test_quiet_keeps_accepting_until_no_request_is_in_progress() -> None:
    """The admin port's way in: a probe still gets its answer while an approver's request
    waits; once that is answered, nothing is in progress and the drain may close the port."""
    async with site() as s:
        busy_reader, busy_writer = await s.hold()
        s.draining.begin()
        loop = asyncio.get_running_loop()
        quieted = asyncio.create_task(quiet(s.listener, loop.time() + LONG_S,
                                            asyncio.Event()))
        probe_reader, probe_writer = await s.connect()
        status, headers, _ = await get(probe_reader, probe_writer)
        assert (status, headers["connection"]) == (200, "close")
        assert not quieted.done()
        s.events.release.set()
        assert (await response(busy_reader))[2] == b"held"
        await asyncio.wait_for(quieted, WAIT_S)
        for writer in (busy_writer, probe_writer):
            writer.close()


async def test_what_is_left_after_the_window_is_cancelled_and_closed() -> None:
    async with site() as s:
        reader, writer = await s.hold()
        left = await drain(s.listener, asyncio.get_running_loop().time(), asyncio.Event())
        assert left == 1, "the window is over with the call in flight"
        assert await cut(s.listener) == 1
        assert s.events.cancelled.is_set(), "the handler saw its cancellation"
        assert await closed(reader), "closed without an answer"
        assert s.listener.open_connections == 0
        writer.close()


async def test_hurry_ends_the_drain_at_once() -> None:
    async with site() as s:
        _, writer = await s.hold()
        hurry = asyncio.Event()
        hurry.set()
        loop = asyncio.get_running_loop()
        assert await drain(s.listener, loop.time() + LONG_S, hurry) == 1
        await cut(s.listener)
        writer.close()


async def test_stop_serving_gives_background_work_the_rest_of_the_window() -> None:
    """Answered calls' background work (storing an answer) finishes inside the window;
    past it, what is left is cancelled."""
    async with site() as s:
        background, done, gate = Background(), asyncio.Event(), asyncio.Event()
        began = asyncio.Event()

        class Observed(Drain):
            def begin(self) -> None:
                super().begin()
                began.set()

        async def work() -> None:
            await gate.wait()
            done.set()

        background.spawn(work(), "settle")
        stopping = asyncio.create_task(stop_serving(
            ShutdownSettings(delay_s=0, drain_s=LONG_S), Observed(), [s.listener],
            asyncio.Event(), background))
        await asyncio.wait_for(began.wait(), WAIT_S)
        assert not done.is_set()
        gate.set()   # the work finishes inside the window, and the stop waits for it
        await asyncio.wait_for(stopping, WAIT_S)
        assert done.is_set()
        with pytest.raises(ConnectionRefusedError):
            await s.connect()

        async def never() -> None:
            await asyncio.Event().wait()

        stuck = Background()
        stuck.spawn(never(), "never")   # past the window: cancelled
        await asyncio.wait_for(stop_serving(ShutdownSettings(delay_s=0, drain_s=0), Drain(),
                                            [], asyncio.Event(), stuck), WAIT_S)
        assert not stuck._tasks


async def test_after_a_cut_background_work_gets_the_grace_even_when_the_window_is_spent(
        ) -> None:
    """The calls the cut cancelled store their final answers under their keys as
    background work (`gateway.act.forward`): it gets `CANCEL_GRACE_S`, though the window is
    over. Without a cut, the window is all there is."""
    class Given(Background):
        def __init__(self) -> None:
            super().__init__()
            self.given: list[float] = []

        async def close(self, timeout_s: float = 0.0) -> None:
            self.given.append(timeout_s)
            await super().close(timeout_s)

    async with site() as s:
        _, writer = await s.hold()
        after_cut = Given()
        await asyncio.wait_for(stop_serving(ShutdownSettings(delay_s=0, drain_s=0), Drain(),
                                            [s.listener], asyncio.Event(), after_cut), WAIT_S)
        assert s.events.cancelled.is_set()
        assert after_cut.given == [CANCEL_GRACE_S]
        writer.close()
    nothing_cut = Given()
    await asyncio.wait_for(stop_serving(ShutdownSettings(delay_s=0, drain_s=0), Drain(), [],
                                        asyncio.Event(), nothing_cut), WAIT_S)
    assert nothing_cut.given == [0.0]


def test_when_draining_runs_each_hook_once_at_the_start_or_at_once() -> None:
    draining, told = Drain(), []
    draining.when_draining(lambda: told.append("early"))
    draining.begin()
    draining.begin()   # the signal and the stop both begin it: the hooks run once
    draining.when_draining(lambda: told.append("late"))
    assert draining.draining and told == ["early", "late"]
