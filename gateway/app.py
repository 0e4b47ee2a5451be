"""The aiohttp applications: the agent-facing gateway and the admin API.

The bundle is loaded (and checked) when the apps are built; everything long-lived is built
in the gateway app's cleanup context (`gateway.runtime.open_runtime`) and lives on the app
under `RUNTIME`; the admin app reads the same runtime. The agent port serves the entrances
(REST today) and the agent's poll of its held calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.admin.api import RUNTIME_OF, add_routes
from gateway.bundle import Bundle, load_bundle
from gateway.config import Settings
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.errors import LoadErrors, NotFound
from gateway.entrances import rest
from gateway.runtime import open_runtime
from gateway.tracing import unavailable as tracing_unavailable
from gateway.web import RUNTIME, Handler, error_middleware


def _everything_to(fallback: Handler) -> Middleware:
    """A middleware sending a request no route can match to `fallback`: a request target
    that is not a path at all (`OPTIONS *`, `CONNECT host:443`) is answered like any
    unknown path, not by aiohttp's bare 404."""
    @web.middleware
    async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            return await fallback(request)
        return await handler(request)
    return unrouted


def _runtime_ctx(settings: Settings, environ: Mapping[str, str], bundle: Bundle,
                 clock: Clock) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, environ, bundle, clock) as rt:
            app[RUNTIME] = rt
            yield
    return ctx


def build_apps(settings: Settings, environ: Mapping[str, str], clock: Clock = SYSTEM_CLOCK
               ) -> tuple[web.Application, web.Application]:
    """The gateway app and the admin app. The bundle is loaded here, eagerly, on the
    calling thread (the event loop's: the embedded engine is bound to it)."""
    problem = tracing_unavailable(settings.tracing)
    if problem is not None:
        raise LoadErrors([problem])
    bundle = load_bundle(settings, clock)
    # client_max_size is a backstop; the entrance enforces the configured limit itself.
    app = web.Application(middlewares=[error_middleware, _everything_to(rest.tool_call)],
                          client_max_size=settings.max_body_bytes + 1)
    app.cleanup_ctx.append(_runtime_ctx(settings, environ, bundle, clock))
    app.router.add_get("/v1/approvals/{approval_id}", rest.poll_approval)
    # Every path, newlines included (`.` would not match an encoded %0A), reaches the
    # entrance, so every request is decided and recorded.
    app.router.add_route("*", r"/{tail:[\s\S]*}", rest.tool_call)

    async def unknown(request: web.Request) -> web.StreamResponse:
        raise NotFound(f"no admin endpoint {request.path[:200]}")

    admin = web.Application(middlewares=[error_middleware, _everything_to(unknown)])
    admin[RUNTIME_OF] = lambda: app.get(RUNTIME)
    add_routes(admin)
    admin.router.add_route("*", r"/{tail:[\s\S]*}", unknown)
    return app, admin
