"""Run the gateway and admin apps on their sockets until SIGTERM/SIGINT, on uvloop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping

import uvloop
from aiohttp import web

from gateway.app import build_apps
from gateway.config import Settings

log = logging.getLogger("toolgate")


async def _serve(settings: Settings, environ: Mapping[str, str],
                 ready: asyncio.Event | None = None,
                 stop: asyncio.Event | None = None) -> None:
    app, admin = build_apps(settings, environ)
    runners = [web.AppRunner(app, access_log=None, handle_signals=False),
               web.AppRunner(admin, access_log=None, handle_signals=False)]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for runner, address in zip(runners, (settings.listen, settings.admin_listen),
                                   strict=True):
            await runner.setup()
            await web.TCPSite(runner, address.host, address.port,
                              shutdown_timeout=10).start()
        log.info("toolgate listening on http://%s (admin http://%s), audit log %s",
                 settings.listen, settings.admin_listen,
                 settings.audit.file or "stdout")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def configure_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: Settings, environ: Mapping[str, str]) -> None:
    configure_logging()
    uvloop.run(_serve(settings, environ))
