"""aiohttp plumbing shared by both apps (the agent port and the admin port).

`error_middleware` is the one place a `GatewayError` becomes a JSON body; it gives every
request its id, so every response — error or not — carries `X-Request-Id` and
`X-Toolgate-Decision`. The runtime lives on the gateway app under `RUNTIME`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.core.errors import GatewayError, InternalError
from gateway.runtime import Runtime

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
        response = json_error(exc, request_id)
    except web.HTTPException as exc:
        # aiohttp's own refusals (e.g. a malformed request line) as JSON, never HTML.
        response = web.json_response({"error": {"code": "http_error", "message": exc.reason,
                                                "request_id": request_id}}, status=exc.status)
    except Exception:
        log.exception("unhandled error on %s", request_id)
        response = json_error(InternalError("internal error"), request_id)
    response.headers["X-Request-Id"] = request_id
    response.headers.setdefault("X-Toolgate-Decision", request.get(DECISION, "none"))
    return response


def json_error(exc: GatewayError, request_id: str) -> web.Response:
    return web.json_response(exc.body(request_id), status=exc.status, headers=exc.headers)
