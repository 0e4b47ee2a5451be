"""Run the gateway and admin apps on their sockets until SIGTERM/SIGINT, on uvloop.

Each port is a `gateway.listener.Listener` with the connection limits of the config. A
request the HTTP parser refuses is answered with the JSON envelope and, on the agent port,
recorded like any refusal (stage `parse`, code `bad_request`); on the admin port it is
counted with the other unauthenticated refusals (`gateway.admin.refusals`). Only the admin
port has a per-client cap: the agent port's one client is the agent.

Before it starts, `gateway.open_files` makes room for the connection caps under the
process's open-file limit, or refuses to start; while it runs, it watches what is left.

Logs go to stderr through `SafeFormatter`: an exception is logged as its types and frames,
never its message, since a message can quote what a client sent (a token, a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import traceback
import uuid
from collections.abc import Mapping
from types import TracebackType

import uvloop
from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway import open_files
from gateway.act.handle import refuse
from gateway.app import build_apps
from gateway.bundle import watch as bundle_watch
from gateway.bundle.reload import Reloader
from gateway.config import Settings
from gateway.core.call import Entrance, RequestFacts
from gateway.core.errors import GatewayError
from gateway.core.stage import Stage
from gateway.listener import ConnectionLimits, Listener, Refused
from gateway.tasks import stop as stop_task
from gateway.web import RUNTIME

log = logging.getLogger("toolgate")
SHUTDOWN_TIMEOUT_S = 10


def connection_limits(settings: Settings, max_connections: int,
                      max_per_client: int | None = None) -> ConnectionLimits:
    return ConnectionLimits(max_connections=max_connections,
                            header_timeout_s=settings.header_timeout_s,
                            idle_timeout_s=settings.idle_timeout_s,
                            max_headers=settings.max_headers,
                            max_header_bytes=settings.max_header_bytes,
                            send_timeout_s=settings.send_timeout_s,
                            max_connections_per_client=max_per_client)


def agent_port_refusals(app: web.Application) -> Refused:
    """Malformed requests on the agent port: one decision record each (stage `parse`)."""
    def refused(request: BaseRequest, error: GatewayError) -> str:
        rt = app[RUNTIME]
        facts = RequestFacts(request_id=f"req_{uuid.uuid4().hex}", entrance=Entrance.REST,
                             method="", path="", source_ip=request.remote or "",
                             scheme="http", received_at=rt.clock.time(),
                             started=rt.clock.monotonic())
        refuse(facts, Stage.PARSE, error, rt.bundles.current, rt)
        return facts.request_id
    return refused


def admin_port_refusals(app: web.Application) -> Refused:
    """Malformed requests on the admin port: counted with the unauthenticated refusals."""
    def refused(request: BaseRequest, error: GatewayError) -> str:
        app[RUNTIME].refusals.count(request.remote or "-", str(error.code), "-")
        return f"req_{uuid.uuid4().hex}"
    return refused


async def _serve(settings: Settings, environ: Mapping[str, str],
                 ready: asyncio.Event | None = None,
                 stop: asyncio.Event | None = None) -> None:
    # The watch's baseline comes first: a change while the bundle is built is not missed.
    baseline = bundle_watch.fingerprint(bundle_watch.watched(settings)) \
        if settings.policy.watch_ms else frozenset()
    app, admin = build_apps(settings, environ)
    runners = [web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S),
               web.AppRunner(admin, handle_signals=False,
                             shutdown_timeout=SHUTDOWN_TIMEOUT_S)]
    listeners: list[Listener] = []
    watch: asyncio.Task[None] | None = None
    files: asyncio.Task[None] | None = None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP reloads the tool specs, policies and data (`gateway.bundle.reload`).
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_on_signal(app))
    try:
        for runner in runners:
            await runner.setup()
        metrics = app[RUNTIME].metrics
        listeners = [
            Listener(runner, address, connection_limits(settings, cap, per_client), refused,
                     turned_away=metrics.connections_turned_away.labels(port).inc,
                     slow_head=metrics.slow_heads.labels(port).inc,
                     send_timed_out=metrics.send_timeouts.labels(port).inc)
            for runner, address, cap, per_client, refused, port in (
                (runners[0], settings.listen, settings.max_connections, None,
                 agent_port_refusals(app), "agent"),
                (runners[1], settings.admin_listen, settings.admin_max_connections,
                 settings.admin_max_connections_per_client, admin_port_refusals(app),
                 "admin"))]
        for listener in listeners:
            await listener.start()
        watch = asyncio.create_task(open_files.watch(), name="open-files")
        if settings.policy.watch_ms:
            files = asyncio.create_task(bundle_watch.watch(
                app[RUNTIME].reloader, bundle_watch.watched(settings),
                settings.policy.watch_ms / 1000, baseline), name="bundle-watch")
        log.info("toolgate listening on http://%s (admin http://%s), audit log %s",
                 settings.listen, settings.admin_listen,
                 settings.audit.file or "stdout")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await stop_task(files)
        await stop_task(watch)
        for listener in listeners:
            await listener.stop()
        for runner in reversed(runners):
            await runner.cleanup()


def _reload_on_signal(app: web.Application) -> None:
    rt = app.get(RUNTIME)
    if rt is not None:   # before the runtime is built there is nothing to reload
        rt.background.spawn(_reload(rt.reloader), "reload")


async def _reload(reloader: Reloader) -> None:
    with contextlib.suppress(GatewayError):   # refused: recorded and logged already
        await reloader.reload("sighup")


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class SafeFormatter(logging.Formatter):
    """SECURITY: exceptions as their types and frames only. An exception's message can
    quote client input — aiohttp's parser errors quote the raw request, `Authorization`
    header included — and no log line may carry a token, a credential or a body."""

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        _, exc, tb = ei
        if exc is None:
            return ""
        lines = ["Traceback (exception messages are not logged):"]
        lines += [f"  {frame.filename}:{frame.lineno} in {frame.name}"
                  for frame in traceback.extract_tb(tb)]
        chain: list[str] = []
        seen: BaseException | None = exc
        while seen is not None and len(chain) < 10:
            chain.append(type(seen).__name__)
            seen = seen.__cause__ or seen.__context__
        lines.append("  " + " <- ".join(chain))
        return "\n".join(lines)


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def serve(settings: Settings, environ: Mapping[str, str]) -> None:
    configure_logging()
    # A file size limit (RLIMIT_FSIZE) reached by the audit file is a failed write — calls
    # are refused and the gateway recovers when the limit is raised — not a dead process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    open_files.fit_open_files(settings)
    uvloop.run(_serve(settings, environ))
