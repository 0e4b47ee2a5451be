"""Run the gateway and admin apps on their sockets until SIGTERM/SIGINT, on uvloop.

Each port is a `gateway.listener.Listener` with the connection limits of the config. A
request the HTTP parser refuses is answered with the JSON envelope and, on the agent port,
recorded like any refusal (stage `parse`, code `bad_request`); on the admin port it is
counted with the other unauthenticated refusals (`gateway.admin.refusals`). Only the admin
port has a per-client cap: the agent port's one client is the agent.

Before it starts, `gateway.open_files` makes room for the connection caps under the
process's open-file limit, or refuses to start; while it runs, it watches what is left.

**Starting.** Whatever stops the gateway before it serves — a port in use, a store or an
audit log that cannot be opened — is one `StartupError` line (`gateway.startup`), never a
traceback. **Stopping.** SIGTERM or SIGINT drains the process (`gateway.listener.drain`):
`/readyz` turns 503 `draining` at once, the agent port accepts for `shutdown.delay_s`, calls
in flight have `shutdown.drain_s` to finish, what is left is cancelled, background work gets
what is left of the window, and the audit log ends with its `closed` record. A second
SIGINT (Ctrl-C again) cuts the drain short.

Under `toolgate serve --workers N` this runs in each worker (`gateway.workers`): the agent
port is bound with SO_REUSEPORT, the admin port by worker 1 only, each log line names its
worker, and a start-up failure is told to the supervisor, which prints it once.

Logs go to stderr through `gateway.logs`: one line per record, JSON or console, and an
exception as its types and frames, never its message — asyncio's reports of errors nobody
handled included (`gateway.logs.loop_exception`, the loop's exception handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Mapping

import uvloop
from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway import open_files
from gateway.act.handle import refuse
from gateway.admin.api import RELOAD_OTHERS
from gateway.app import build_apps
from gateway.bundle import watch as bundle_watch
from gateway.bundle.reload import Reloader
from gateway.config import Address, Settings
from gateway.core.call import Entrance, RequestFacts
from gateway.core.errors import GatewayError
from gateway.core.stage import Stage
from gateway.listener import ConnectionLimits, Listener, Refused
from gateway.listener.drain import CANCEL_GRACE_S, DRAIN, Drain, stop_serving
from gateway.logs import configure_logging, loop_exception
from gateway.metrics import MULTIPROC_ENV, register_process
from gateway.startup import ONE_LINE, StartupError, bind_error, starting
from gateway.tasks import stop as stop_task
from gateway.web import RUNTIME
from gateway.workers import Worker

__all__ = ["StartupError", "configure_logging", "serve"]

log = logging.getLogger("toolgate")
# aiohttp's own shutdown of what is still open after the drain (it waits this for a
# request, cancels it, and waits this again): by then the drain has closed everything.
SHUTDOWN_TIMEOUT_S = CANCEL_GRACE_S
# A worker's start-up failure, in UTF-8 bytes: with its prefix the whole line stays under
# PIPE_BUF (4,096 bytes on Linux), so it reaches the supervisor whole, never interleaved.
MAX_LINE_BYTES = 3000


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
                 stop: asyncio.Event | None = None, worker: Worker | None = None) -> None:
    """Serve until `stop` (or SIGTERM/SIGINT), then drain. As a worker of `--workers N`
    (`gateway.workers`): the agent port with SO_REUSEPORT, the admin port only on worker 1
    (opened once the supervisor says every worker listens), and reloads passed on between
    workers. Raises `StartupError` (or a config, key or credential error) if it cannot
    start."""
    # SECURITY: asyncio's own reports would put exception messages in the log.
    asyncio.get_running_loop().set_exception_handler(loop_exception)
    # The watch's baseline comes first: a change while the bundle is built is not missed.
    baseline = bundle_watch.fingerprint(bundle_watch.watched(settings)) \
        if settings.policy.watch_ms else frozenset()
    with starting(settings):
        app, admin = build_apps(settings, environ)
    draining, hurry = Drain(), asyncio.Event()
    for served in (app, admin):
        served.on_response_prepare.append(draining.on_response_prepare)
    admin[DRAIN] = draining
    runners = _runners(app, admin, worker)
    serves_admin = len(runners) > 1
    listeners: list[Listener] = []
    started: list[Listener] = []
    tasks: list[asyncio.Task[None]] = []
    stop = stop or asyncio.Event()
    every_worker_listens = asyncio.Event()
    _on_signals(app, draining, stop, hurry)
    if worker is not None:
        tasks += _as_worker(worker, app, every_worker_listens, stop)
    try:
        with starting(settings):
            for runner in runners:
                await runner.setup()
            listeners = _listeners(settings, app, runners, reuse_port=worker is not None)
        # Once draining, the approval sweeper starts no call the drain could cut.
        draining.when_draining(app[RUNTIME].sweeper.drain)
        await _listen(listeners[0], "listen", settings.listen)
        started.append(listeners[0])
        if worker is not None:
            worker.tell("listening")
        if not serves_admin or worker is None or await _first(every_worker_listens, stop):
            for listener in listeners[1:]:
                await _listen(listener, "admin_listen", settings.admin_listen)
                started.append(listener)
            tasks += _watches(settings, app, baseline)
            log.info("toolgate listening on http://%s (%s), audit log %s", settings.listen,
                     f"admin http://{settings.admin_listen}" if serves_admin
                     else "admin port on worker 1", settings.audit.file or "stdout")
            if ready is not None:
                ready.set()
            await stop.wait()
        rt = app.get(RUNTIME)
        await stop_serving(settings.shutdown, draining, started, hurry,
                           rt.background if rt is not None else None)
    finally:
        for task in reversed(tasks):
            await stop_task(task)
        for listener in listeners:
            await listener.stop()
        for runner in reversed(runners):
            await runner.cleanup()


def _on_signals(app: web.Application, draining: Drain, stop: asyncio.Event,
                hurry: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_signal, sig, draining, stop, hurry)
    # SIGHUP reloads the tool specs, policies and data (`gateway.bundle.reload`).
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_on_signal(app, "sighup"))


def _watches(settings: Settings, app: web.Application,
             baseline: bundle_watch.Fingerprint) -> list[asyncio.Task[None]]:
    """What runs while the gateway serves: the open-file watch, and the file watch that
    reloads the bundle (`policy.watch_ms`)."""
    tasks = [asyncio.create_task(open_files.watch(), name="open-files")]
    if settings.policy.watch_ms:
        tasks.append(asyncio.create_task(bundle_watch.watch(
            app[RUNTIME].reloader, bundle_watch.watched(settings),
            settings.policy.watch_ms / 1000, baseline), name="bundle-watch"))
    return tasks


def _stop_signal(signum: int, draining: Drain, stop: asyncio.Event,
                 hurry: asyncio.Event) -> None:
    """SIGTERM/SIGINT: unready at once, then the drain; a second SIGINT cuts it short (a
    person pressing Ctrl-C again). A SIGTERM after a SIGINT does not: under `--workers`, a
    terminal's Ctrl-C reaches each worker, and then the supervisor's SIGTERM too."""
    if stop.is_set() and signum == signal.SIGINT:
        hurry.set()
    draining.begin()
    stop.set()


async def _listen(listener: Listener, key: str, address: Address) -> None:
    try:
        await listener.start()
    except OSError as exc:
        raise bind_error(key, address, exc) from None


def _runners(app: web.Application, admin: web.Application,
             worker: Worker | None) -> list[web.AppRunner]:
    """The agent app's runner, and the admin app's unless the admin port is another
    worker's."""
    apps = [app]
    if worker is None or worker.serves_admin:
        apps.append(admin)
    if worker is not None and worker.serves_admin:
        def reload_others() -> None:
            worker.tell("reload")
        admin[RELOAD_OTHERS] = reload_others
    return [web.AppRunner(a, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            for a in apps]


def _listeners(settings: Settings, app: web.Application, runners: list[web.AppRunner], *,
               reuse_port: bool) -> list[Listener]:
    """The agent port's listener, then the admin port's if there is its runner."""
    metrics = app[RUNTIME].metrics
    ports: list[tuple[Address, int, int | None, Refused, str]] = [
        (settings.listen, settings.max_connections, None, agent_port_refusals(app), "agent"),
        (settings.admin_listen, settings.admin_max_connections,
         settings.admin_max_connections_per_client, admin_port_refusals(app), "admin")]
    return [Listener(runner, address, connection_limits(settings, cap, per_client), refused,
                     turned_away=metrics.connections_turned_away.labels(port).inc,
                     slow_head=metrics.slow_heads.labels(port).inc,
                     send_timed_out=metrics.send_timeouts.labels(port).inc,
                     reuse_port=reuse_port and port == "agent")
            for runner, (address, cap, per_client, refused, port) in zip(runners, ports,
                                                                         strict=False)]


def _as_worker(worker: Worker, app: web.Application, every_worker_listens: asyncio.Event,
               stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """A worker's signals from its supervisor (`gateway.workers`), and what it runs to stop
    when the supervisor is gone."""
    loop = asyncio.get_running_loop()
    # Another worker reloaded by the admin API: this one reloads too.
    loop.add_signal_handler(signal.SIGUSR1, lambda: _reload_on_signal(app, "worker"))
    loop.add_signal_handler(signal.SIGUSR2, every_worker_listens.set)
    if worker.die_with_parent():
        return []
    return [asyncio.create_task(_watch_parent(worker, stop), name="parent")]


async def _first(wanted: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait for `wanted`; False if `stop` came first."""
    waits = {asyncio.create_task(wanted.wait()), asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            await stop_task(task)
    return wanted.is_set() and not stop.is_set()


PARENT_CHECK_S = 1.0


async def _watch_parent(worker: Worker, stop: asyncio.Event) -> None:
    """Where the kernel cannot signal a worker whose supervisor died: look once a second."""
    while True:
        await asyncio.sleep(PARENT_CHECK_S)
        if not worker.parent_alive():
            break
    log.error("the supervisor (pid %d) is gone; stopping", worker.parent)
    stop.set()


def _reload_on_signal(app: web.Application, trigger: str) -> None:
    rt = app.get(RUNTIME)
    if rt is not None:   # before the runtime is built there is nothing to reload
        rt.background.spawn(_reload(rt.reloader, trigger), "reload")


async def _reload(reloader: Reloader, trigger: str) -> None:
    with contextlib.suppress(GatewayError):   # refused: recorded and logged already
        await reloader.reload(trigger)


def serve(settings: Settings, environ: Mapping[str, str], worker: Worker | None = None
          ) -> int:
    """One gateway process: the whole gateway, or worker `worker` of `--workers N`, which
    writes its own audit chain (`Worker.settings`). Returns the exit code: 0 after a clean
    stop. Raises `StartupError`, `LoadErrors`, `KeyConfigError` or `CredentialError` (one
    line each) if it cannot start — except in a worker, which tells its supervisor instead
    (the supervisor prints it, once for all workers) and returns 1."""
    configure_logging(settings.log, worker=None if worker is None else worker.index)
    if worker is not None:
        settings = worker.settings(settings)
        # Its pid, for the process metrics of every worker (`gateway.metrics`).
        register_process(environ.get(MULTIPROC_ENV), f"worker-{worker.index}")
    # A file size limit (RLIMIT_FSIZE) reached by the audit file is a failed write — calls
    # are refused and the gateway recovers when the limit is raised — not a dead process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        open_files.fit_open_files(settings)
        uvloop.run(_serve(settings, environ, worker=worker))
    except ONE_LINE as exc:
        if worker is not None and worker.tell(f"failed {_line(exc)}"):
            return 1
        raise
    except Exception:
        # After it served: the stop itself failed. One log line (types and frames), exit 1.
        log.exception("the gateway did not stop cleanly")
        return 1
    return 0


def _line(exc: BaseException) -> str:
    """A start-up failure as one line for the supervisor's pipe (a write under PIPE_BUF
    arrives whole): at most `MAX_LINE_BYTES` of UTF-8, cut on a character boundary."""
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    # A lone surrogate (an undecodable file name) is escaped: the line must encode.
    data = " ".join(text.split()).encode("utf-8", "backslashreplace")[:MAX_LINE_BYTES]
    return data.decode("utf-8", "ignore")   # drops only a character the cut split
