"""The aiohttp applications: the agent-facing gateway and the admin API.

Everything long-lived (policy engine, store, upstream pool, audit sinks) is built in the
gateway app's cleanup context and lives on the app under `RUNTIME`; the admin app reads the
same runtime. `error_middleware` is the one place a `GatewayError` becomes a JSON body, and
every response carries `X-Request-Id` and `X-Toolgate-Decision`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from gateway.act import handle as call_handler
from gateway.admin.api import RUNTIME_OF, add_routes
from gateway.approvals.notify import Notifier
from gateway.approvals.service import ApprovalService
from gateway.audit.log import AuditLog
from gateway.auth import TokenVerifier, bearer_principal, load_keys
from gateway.bundle.specs import SpecSet, load_specs
from gateway.config import Settings
from gateway.context import Call, Runtime
from gateway.core.errors import BodyTooLarge, GatewayError, InternalError, NotFound
from gateway.metrics import Metrics
from gateway.policy import load_sources
from gateway.policy.embedded import EmbeddedEngine
from gateway.state.killswitch import KillSwitches
from gateway.store import open_store
from gateway.tasks import Background
from gateway.upstreams.client import Forwarder

log = logging.getLogger("toolgate")
RUNTIME = web.AppKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
DECISION = web.RequestKey("decision", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # One id per request, made here so that every response, error or not, carries it.
    request_id = f"req_{uuid.uuid4().hex}"
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = _json_error(exc, request_id)
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. a malformed request line) as JSON, never HTML.
        response = web.json_response({"error": {"code": "http_error", "message": exc.reason,
                                                "request_id": request_id}}, status=exc.status)
    except Exception:
        log.exception("unhandled error on %s", request_id)
        response = _json_error(InternalError("internal error"), request_id)
    response.headers["X-Request-Id"] = request_id
    response.headers.setdefault("X-Toolgate-Decision", request.get(DECISION, "none"))
    return response


def _json_error(exc: GatewayError, request_id: str) -> web.Response:
    return web.json_response(exc.body(request_id), status=exc.status, headers=exc.headers)


def _reader(request: web.Request) -> Callable[[int], Awaitable[bytes]]:
    async def read(limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        data = await request.content.read(limit + 1)
        while len(data) <= limit and not request.content.at_eof():
            more = await request.content.read(limit + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes")
        return data
    return read


async def tool_call(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    request_id = request[REQUEST_ID]
    # raw_path is the request target as sent: still encoded, dot segments untouched.
    raw_path, _, query_string = request.raw_path.partition("?")
    call = Call(
        request_id=request_id, method=request.method, raw_path=raw_path,
        query=tuple(request.rel_url.query.items()), query_string=query_string,
        headers=request.headers, read_body=_reader(request),
        source_ip=request.remote or "", host=request.host, scheme=request.scheme,
        received_at=time.time(), started=time.perf_counter())
    reply = await call_handler.handle(call, rt)
    request[DECISION] = reply.decision
    response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    if reply.content_type:
        response.headers["Content-Type"] = reply.content_type
    response.headers["X-Toolgate-Decision"] = reply.decision
    return response


async def get_approval(request: web.Request) -> web.StreamResponse:
    """The agent polls its held call; only the principal that made it may read it."""
    rt = request.app[RUNTIME]
    principal = bearer_principal(request.headers.get("Authorization"), rt.verifier)
    approval = await rt.store.get_approval(request.match_info["approval_id"])
    is_approver = rt.settings.auth.approver_scope in principal.scopes
    # SECURITY: another principal's call looks exactly like a missing one.
    if approval is None or not (is_approver or (approval.sub == principal.sub
                                                and approval.tenant == principal.tenant)):
        raise NotFound("no such approval")
    body = {**approval.public(), "status": str(approval.status_at(time.time()))}
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def _runtime_ctx(settings: Settings, environ: Mapping[str, str], specs: SpecSet
                 ) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        verifier = TokenVerifier(settings.auth, load_keys(settings.auth, environ))
        forwarder = Forwarder(settings.upstreams, environ, settings.max_response_bytes)
        sources = load_sources(settings.policies)
        engine = await EmbeddedEngine.start(sources, settings.policy.query,
                                            settings.policy.timeout_ms)
        audit = AuditLog(settings.audit)
        try:
            store = await open_store(settings)
        except BaseException:
            await engine.close()
            audit.close()
            raise
        await forwarder.start()
        metrics = Metrics()
        notifier = Notifier(settings.webhook, metrics.webhook_failures)
        await notifier.start()
        kills = KillSwitches(store, settings.killswitch_poll_s)
        approvals = ApprovalService(store, forwarder, audit, specs, notifier,
                                    wait_time=metrics.approval_wait, kills=kills,
                                    budgets=settings.budgets,
                                    sweep_interval_s=settings.approval_sweep_interval_s,
                                    wait_s=settings.approval_wait_s,
                                    idempotency_retention_s=settings.idempotency_retention_s)
        if settings.fail_open:
            log.warning("fail_open is set: calls are ALLOWED when the policy engine is "
                        "unavailable")
        await kills.start()
        background = Background()
        app[RUNTIME] = Runtime(settings, specs, verifier, engine, store, forwarder, audit,
                               environ, metrics, approvals, kills, background)
        await approvals.start()
        try:
            yield
        finally:
            await background.close()
            await kills.close()
            await approvals.close()
            await notifier.close()
            await forwarder.close()
            await store.close()
            await engine.close()
            audit.close()
    return ctx


def build_apps(settings: Settings, environ: Mapping[str, str]
               ) -> tuple[web.Application, web.Application]:
    """The gateway app and the admin app. Specs are loaded (and checked) here, eagerly."""
    specs = load_specs(settings.tool_specs, settings.upstreams.keys())
    # client_max_size is a backstop; the parse stage enforces the configured limit itself.
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_body_bytes + 1)
    app.cleanup_ctx.append(_runtime_ctx(settings, environ, specs))
    app.router.add_get("/v1/approvals/{approval_id}", get_approval)
    app.router.add_route("*", "/{tail:.*}", tool_call)

    admin = web.Application(middlewares=[error_middleware])
    admin[RUNTIME_OF] = lambda: app.get(RUNTIME)
    add_routes(admin)

    async def unknown(request: web.Request) -> web.StreamResponse:
        raise NotFound(f"no admin endpoint {request.path}")

    admin.router.add_route("*", "/{tail:.*}", unknown)
    return app, admin
