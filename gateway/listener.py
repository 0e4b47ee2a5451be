"""The listening sockets: aiohttp's HTTP server, with the limits a gateway needs against
slow and hostile clients, on both ports.

- **Connection cap.** Past `max_connections` open connections, a new one is answered
  `503` and closed at once (counted, never audited: refusing costs nothing).
- **Header timeout.** A request head must arrive whole within `header_timeout` of its first
  byte, or the connection is closed (a client trickling headers holds nothing for long).
- **Idle timeout.** A connection with no request in progress is closed after
  `idle_timeout` — at its start too, so a connection that never sends is not kept.
- **Body timeout** is the entrances' (`gateway.entrances.rest`, `gateway.admin.api`): a
  body must arrive within `body_timeout`.
- **Header limits.** At most `max_headers` header fields of at most `max_header_bytes`.
- **Malformed requests** — whatever aiohttp's parser refuses (bare LF line endings, a
  header too long, two Content-Type headers) — are answered with the JSON error envelope
  (`bad_request`) and passed to `refused`, which audits them (the agent port: one decision
  record each) or aggregates them (the admin port). What the client sent is never logged.

aiohttp's own `TCPSite` has no connection cap or head timeout, so the socket is opened here
and each connection gets a `_Handler`: aiohttp's `RequestHandler`, plus the head timer and
the JSON refusal. It reads three of aiohttp's private fields (`_request_count`,
`_current_request`, `_messages`) to tell a new request head from body bytes; the pinned
aiohttp range and the tests keep that honest.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.config import Address
from gateway.core.errors import BadRequest, GatewayError

log = logging.getLogger("toolgate.http")
LINGER_S = 1.0

# What to do with a request the HTTP parser refused: audit (or count) it, and give the
# request id its answer carries.
Refused = Callable[[BaseRequest, GatewayError], str]
# Counts an event on this port (a connection turned away, a head too slow).
Count = Callable[[], None]


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    idle_timeout_s: float
    max_headers: int
    max_header_bytes: int


class _Handler(RequestHandler):
    """One connection: aiohttp's handler, with a head timer and JSON refusals."""

    def __init__(self, manager: web.Server, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._listener.opened(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._listener.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        # Bytes while no request is in progress or queued are the start of a request head.
        idle = self._current_request is None and not self._messages
        super().data_received(data)
        if self._request_count > heads:
            self._stop_head_timer()     # the head is complete
        elif idle and data and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._listener.limits.header_timeout_s,
                                                     self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._listener.slow_head()
        log.info("closed a connection that did not send its request head in time")
        if self.transport is not None:
            self.transport.close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # SECURITY: never log the request or the parser's message: it quotes what the client
        # sent (a refused request's Authorization header included).
        log.warning("refused a malformed request from %s (%s)", request.remote,
                    type(exc).__name__ if exc is not None else status)
        error = (BadRequest("the request is not well-formed HTTP") if status < 500
                 else GatewayError("the request could not be handled"))
        try:
            request_id = self._listener.refused(request, error)
        except Exception:  # the refusal still gets its answer; the failure is logged
            log.exception("a malformed request could not be recorded")
            request_id = f"req_{uuid.uuid4().hex}"
        response = web.Response(status=error.status, body=orjson.dumps(error.body(request_id)),
                                content_type="application/json",
                                headers={"X-Request-Id": request_id,
                                         "X-Toolgate-Decision": "deny"})
        response.force_close()
        return response


class _Full(asyncio.Protocol):
    """The answer to a connection past the cap: 503, then closed. What the client sends
    meanwhile is read and dropped (closing on unread bytes would reset the connection
    before the client could read the answer); it closes when the client does, or after
    `LINGER_S` at most."""

    BODY = orjson.dumps({"error": {"code": "unavailable",
                                   "message": "too many connections; retry later"}})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                        b"\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: "
                        + str(len(self.BODY)).encode() + b"\r\n\r\n" + self.BODY)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._transport.close()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


class Listener:
    """A listening socket for one set-up `AppRunner`, with `limits` on its connections."""

    def __init__(self, runner: web.AppRunner, address: Address, limits: ConnectionLimits,
                 refused: Refused, *, turned_away: Count = lambda: None,
                 slow_head: Count = lambda: None) -> None:
        self.limits = limits
        self._runner = runner
        self._address = address
        self.refused = refused
        self.turned_away = turned_away   # a connection refused at the cap
        self.slow_head = slow_head       # a connection closed: its head took too long
        self._open: set[_Handler] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def opened(self, handler: _Handler) -> None:
        self._open.add(handler)

    def closed(self, handler: _Handler) -> None:
        self._open.discard(handler)

    def _connection(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None, "set the runner up first"
        if len(self._open) >= self.limits.max_connections:
            self.turned_away()
            return _Full()
        return _Handler(server, self, loop=asyncio.get_running_loop(),
                        keepalive_timeout=self.limits.idle_timeout_s,
                        max_headers=self.limits.max_headers,
                        max_field_size=self.limits.max_header_bytes,
                        max_line_size=self.limits.max_header_bytes,
                        # After answering a request whose body was not read (too large, too
                        # slow), the rest is read and dropped this long before closing.
                        lingering_time=LINGER_S, access_log=None, logger=log)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._connection, self._address.host, self._address.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
