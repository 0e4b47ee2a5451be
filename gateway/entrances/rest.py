"""The REST entrance (DESIGN §3): `route.method route.path` on the agent port.

It turns an HTTP request into a `ToolCall` and renders the reply; it decides nothing. In
order, each step refusing with a JSON error and one decision record (`gateway.act.handle`):

1. route — the tool is found by (method, raw path) in the call's bundle; the route table
   matches the still-encoded path segment by segment (`gateway.bundle.routes`). 403
   `tool_not_allowed`; 400 `invalid_arguments` for a path parameter that is not one segment.
   Nothing reads the body of a request no tool is declared for.
2. parse — the body: 415 `unsupported_media_type` for a compressed body or one that is not
   `application/json` (checked before reading: the server would decompress it); 413
   `body_too_large` past `limits.max_body_bytes`; 400 `invalid_json` (one meaning only:
   `gateway.entrances.json_body`). An empty body is `{}`.
3. arguments — path parameters, query parameters (string values) and body members in one
   object; a name given twice is 400 `invalid_arguments` (it could validate one value and
   forward another).

The tool call keeps the body's exact bytes (what the upstream receives), the agent's
headers (the plan's allow-list picks from them), the credential, and the key and run hints.
Every call gets a trace id, its `traceparent`'s when valid, and, when tracing is on, a span
covering all of it, refusals included (`gateway.tracing`).
The agent polls a held call at `GET /v1/approvals/<id>` (`poll_approval`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.act.answers import Reply
from gateway.act.handle import handle, refuse
from gateway.approvals.rules import may_read
from gateway.auth import authenticate_bearer
from gateway.bundle import Bundle
from gateway.bundle.routes import decode_params
from gateway.bundle.specs import ToolSpec
from gateway.core.call import Entrance, RequestFacts, ToolCall
from gateway.core.errors import (
    BodyTooLarge,
    GatewayError,
    InvalidArguments,
    InvalidJson,
    NotFound,
    RequestTimeout,
    ToolNotAllowed,
    UnsupportedMediaType,
    quote,
)
from gateway.core.stage import Stage
from gateway.entrances.json_body import arguments
from gateway.runtime import Runtime
from gateway.web import DECISION, REQUEST_ID, RUNTIME


class _Refused(Exception):
    def __init__(self, stage: Stage, error: GatewayError, spec: ToolSpec | None) -> None:
        self.stage, self.error, self.spec = stage, error, spec


async def tool_call(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    bundle = rt.bundles.current  # pinned: this call is judged by this bundle to the end
    # raw_path is the request target as sent: still encoded, dot segments untouched.
    raw_path, _, query = request.raw_path.partition("?")
    # The agent's trace continues if it sent a valid traceparent; else a new one starts.
    trace_id, trace = rt.tracing.start(
        request.headers.getall("traceparent", None), decision_id=request[REQUEST_ID],
        method=request.method, entrance=Entrance.REST)
    facts = RequestFacts(
        request_id=request[REQUEST_ID], entrance=Entrance.REST, method=request.method,
        path=raw_path, source_ip=request.remote or "", scheme=request.scheme,
        received_at=rt.clock.time(), started=rt.clock.monotonic(),
        trace_id=trace_id, trace=trace)
    if trace is None:
        return render(request, await _reply(request, facts, query, bundle, rt))
    with trace:  # the call's span ends on every path, cancellation included
        reply = await _reply(request, facts, query, bundle, rt)
        trace.answered(reply.status, reply.decision)
        return render(request, reply)


async def _reply(request: web.Request, facts: RequestFacts, query: str, bundle: Bundle,
                 rt: Runtime) -> Reply:
    try:
        call = await _tool_call(request, facts, query, bundle, rt)
    except _Refused as r:
        if facts.trace is not None:
            if r.spec is not None:
                facts.trace.tool(r.spec)
            facts.trace.refused(r.stage, str(r.error.code))
        return refuse(facts, r.stage, r.error, bundle, rt, r.spec)
    if facts.trace is not None:
        facts.trace.tool(call.spec)
    return await handle(call, bundle, rt)


def render(request: web.Request, reply: Reply) -> web.Response:
    request[DECISION] = reply.decision
    response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    if not request.content.at_eof():
        # A body left unread (too large, too slow, malformed): the connection is not kept,
        # so no leftover byte is ever read as the start of another request.
        response.force_close()
    if reply.content_type:
        response.headers["Content-Type"] = reply.content_type
    response.headers["X-Toolgate-Decision"] = reply.decision
    return response


async def _tool_call(request: web.Request, facts: RequestFacts, query: str, bundle: Bundle,
                     rt: Runtime) -> ToolCall:
    found = bundle.routes.match(request.method, facts.path)
    if found is None:
        raise _Refused(Stage.ROUTE, ToolNotAllowed(
            f"no tool is declared for {quote(request.method)} {quote(facts.path)}"), None)
    spec, raw_params = found
    try:
        path_params = decode_params(spec.route, raw_params)
    except GatewayError as exc:
        raise _Refused(Stage.ROUTE, exc, spec) from None
    try:
        body = await _read_body(request, rt.settings.max_body_bytes, rt.settings.body_timeout_s)
        body_args = arguments(body)
    except GatewayError as exc:
        raise _Refused(Stage.PARSE, exc, spec) from None
    args: dict[str, Any] = dict(path_params)
    # SECURITY: a name given twice could validate one value and forward another.
    for name, value in (*request.rel_url.query.items(), *body_args.items()):
        if name in args:
            raise _Refused(Stage.ROUTE, InvalidArguments(
                f"argument {quote(name)} is given more than once"), spec)
        args[name] = value
    headers = request.headers
    return ToolCall(facts=facts, spec=spec, args=args, body=body, path_params=path_params,
                    query=query, headers=headers, authorization=headers.get("Authorization"),
                    key_hint=headers.get("Idempotency-Key"),
                    run_hint=headers.get("X-Agent-Run-Id"))


def _json_media(content_type: str) -> None:
    """A JSON media type, with at most one parameter: `charset=utf-8`. An allow-list: a
    parameter the gateway does not know could make the upstream read the bytes otherwise
    (a second `charset`, read last where the gateway read first)."""
    media, *given = content_type.split(";")
    media = media.strip().lower()
    params = [param for param in given if param.strip()]
    if not (media == "application/json"
            or (media.startswith("application/") and media.endswith("+json"))):
        raise UnsupportedMediaType("a body must be sent as Content-Type: application/json")
    names = [param.partition("=")[0].strip().lower() for param in params]
    if any(name != "charset" for name in names):
        raise UnsupportedMediaType("a JSON Content-Type takes no parameter but charset=utf-8")
    charsets = [param.partition("=")[2].strip().strip('"').lower() for param in params]
    if charsets and charsets not in (["utf-8"], ["utf8"]):
        # RFC 8259: JSON is UTF-8. The gateway reads it so; an upstream told another
        # charset would read other arguments from the same bytes.
        raise InvalidJson("a JSON body is UTF-8: send charset=utf-8 once, or no charset")


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    headers = request.headers
    # Checked before reading: the HTTP server would try to decompress it. Every
    # Content-Encoding header counts: `identity` then `gzip` is compressed.
    encodings = [e.strip().lower() for e in headers.getall("Content-Encoding", [])]
    if encodings and encodings != ["identity"]:
        raise UnsupportedMediaType("a compressed body is not accepted; send it as is")
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            data = await request.content.read(limit + 1)
            while len(data) <= limit and not request.content.at_eof():
                more = await request.content.read(limit + 1 - len(data))
                if not more:
                    break
                data += more
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    except (OSError, HttpProcessingError) as exc:
        # The client broke off or sent a malformed body: refused, and recorded like any
        # other refusal.
        raise InvalidJson(f"the body could not be read: {type(exc).__name__}") from None
    if len(data) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    if not data.strip():
        return data
    # SECURITY: the upstream reads the bytes by their Content-Type; the gateway judged them
    # as JSON. A form or other type would let the upstream see arguments nobody checked.
    # (The HTTP parser refuses a request with two Content-Type headers.)
    _json_media(headers.get("Content-Type", ""))
    return data


async def poll_approval(request: web.Request) -> web.StreamResponse:
    """The agent polls its held call; only the principal that made it may read it."""
    rt = request.app[RUNTIME]
    principal = await authenticate_bearer(request.headers.get("Authorization"), rt.verifier)
    approval = await rt.store.get_approval(request.match_info["approval_id"])
    # SECURITY: another principal's call looks exactly like a missing one.
    if approval is None or not may_read(approval, principal, rt.settings.auth.approver_scope):
        raise NotFound("no such approval")
    body = {**approval.public(rt.upstreams.credential_header(approval.plan.upstream)),
            "status": str(approval.status_at(rt.clock.time()))}
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())
