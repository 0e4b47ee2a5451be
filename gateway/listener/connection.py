"""One connection on a `gateway.listener.Listener`: aiohttp's request handler with the
head and send timers and the JSON refusal of a malformed request (`Connection`), and the
answer to a connection past a cap (`Full`). The limits themselves are described in
`gateway.listener`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.core.errors import BadRequest, GatewayError, OverCapacity

if TYPE_CHECKING:
    from gateway.listener import Listener

log = logging.getLogger("toolgate.http")
LINGER_S = 1.0
HEAD_END = b"\r\n\r\n"
MAX_PIECES = 8   # pieces one read may be fed in (see `Connection`)


class Connection(RequestHandler):
    """One connection: aiohttp's handler, with the head and send timers and JSON refusals.

    The head timer must run exactly while a request head is incomplete, and aiohttp's
    parser (llhttp, in C) does not say where it stands. So the bytes are fed to it in pieces
    that end wherever a request can end — after every CRLFCRLF (the end of a head, or of a
    chunked body) and at the end of a Content-Length body — and after each piece the
    parser's output (a new message, a body at its end) says where the stream stands: in a
    head, in a body, or between requests. Without that, a partial head sent behind a
    complete request would wait for the idle timeout instead of the head timeout.

    SECURITY: each piece is one call into the parser, so a stream of CRLFCRLF would cost one
    call per four bytes. Empty lines between requests (which HTTP lets a server ignore) are
    dropped unfed, and one read is fed in at most `MAX_PIECES` pieces: past that the
    connection stops tracking where its stream stands and is fed whole from then on, as
    aiohttp does — its head timer then gives way to the idle timeout.
    """

    def __init__(self, manager: web.Server, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self.client: str | None = None     # set when counted against a per-client cap
        self._socket: asyncio.Transport | None = None  # aiohttp drops its own on close
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._body_left = 0                   # bytes of a Content-Length body still to come
        self._chunked: StreamReader | None = None  # a chunked body still arriving
        self._in_head = False                 # some bytes of a head came, not all of it
        self._carry = b""                     # the last bytes fed, for a CRLFCRLF across reads
        self._unfed = b""                     # held back while aiohttp's parser is paused
        self._untracked = False               # fed whole: past MAX_PIECES in one read
        self._last = False                    # an upgrade request: nothing is read after it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self._listener.admit(self, transport):
            full = self._listener.full()
            transport.set_protocol(full)
            full.connection_made(transport)
            return
        self._socket = transport
        # Pause writing as soon as anything waits in the buffer, so the send timer knows
        # whenever the client is behind (aiohttp then drains to empty, not to 16 KiB).
        transport.set_write_buffer_limits(high=0)
        super().connection_made(transport)

    @property
    def idle(self) -> bool:
        """Waiting for a request: none queued, none being handled (aiohttp's own test before
        it closes a kept-alive connection). A head that has begun to arrive counts as idle:
        its request has not started."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    @property
    def handler(self) -> asyncio.Task[None] | None:
        """aiohttp's task serving this connection's requests; cancelling it cancels the
        request being handled (`gateway.listener.drain.cut`)."""
        return self._task_handler

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._stop_send_timer()
        self._listener.closed(self)
        super().connection_lost(exc)

    # ---- the send timer ----

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._listener.limits.send_timeout_s,
                                                     self._send_too_slow)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_too_slow(self) -> None:
        self._send_timer = None
        self._listener.send_timed_out()
        unsent = self._socket.get_write_buffer_size() if self._socket is not None else 0
        log.info("aborted a connection that did not take its response in time "
                 "(%d bytes unsent)", unsent)
        if self._socket is not None:
            self._socket.abort()   # close() would wait for the client to read

    # ---- the head timer ----

    def data_received(self, data: bytes) -> None:
        if self._close or self._force_close:
            return
        if self._untracked:
            data, self._unfed = self._unfed + data, b""
            super().data_received(data)
            return
        if not data:   # aiohttp resuming its parser: it first finishes what it holds
            self._feed(b"")
        data, self._unfed = self._unfed + data, b""
        heads = self._request_count
        at = pieces = 0
        while at < len(data) and not self._parser_full() and not (self._close
                                                                  or self._force_close):
            if self._between_requests():
                at = len(data) - len(data[at:].lstrip(b"\r\n"))   # empty lines: dropped
                if at == len(data):
                    break
            if pieces == MAX_PIECES:
                self._untrack()
                super().data_received(data[at:])
                return
            end = self._piece_end(data, at)
            self._feed(data if at == 0 and end == len(data) else data[at:end])
            pieces += 1
            at = end
            if self._last and self._between_requests():
                self.close()   # answered, then closed; what follows is never read
        if at:
            self._carry = (self._carry + data[max(0, at - 3):at])[-3:]
        if at < len(data) and not (self._close or self._force_close):
            self._unfed = data[at:]
        if self._request_count > heads:
            self._stop_head_timer()   # a head is complete; the next one has its own time
        in_body = self._body_left > 0 or self._chunked is not None
        head_waits = bool(self._unfed) and not in_body and HEAD_END not in self._unfed
        if (self._in_head or head_waits) and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._listener.limits.header_timeout_s,
                                                     self._head_too_slow)

    def _between_requests(self) -> bool:
        return not (self._in_head or self._body_left or self._chunked is not None)

    def _untrack(self) -> None:
        """Stop tracking the stream (see the class's docstring): no head timer from now on;
        the idle timeout still closes a connection that stops sending."""
        self._untracked = True
        self._stop_head_timer()
        self._in_head, self._body_left, self._chunked = False, 0, None

    def _parser_full(self) -> bool:
        """aiohttp's parser holds back: its queue of requests is full, or a body's reader
        is. What comes next is kept here until it asks again (`data_received(b"")`)."""
        return len(self._messages) >= self._max_msg_queue_size or self._reading_paused

    def _piece_end(self, data: bytes, at: int) -> int:
        """Where the piece of `data` starting at `at` ends: where a request may end."""
        if self._body_left:
            return min(len(data), at + self._body_left)
        if at == 0 and self._carry:
            found = (self._carry + data[:3]).find(HEAD_END)
            if found != -1:
                return found + len(HEAD_END) - len(self._carry)
        found = data.find(HEAD_END, at)
        return len(data) if found == -1 else found + len(HEAD_END)

    def _feed(self, piece: bytes) -> None:
        heads = self._request_count
        super().data_received(piece)
        if self._body_left:
            self._body_left -= len(piece)   # a piece never runs past the body's end
        elif self._chunked is not None:
            if self._chunked.is_eof():
                self._chunked = None
        elif self._request_count == heads and piece.strip(b"\r\n"):
            self._in_head = True   # (an empty line between requests is not a head)
        if self._request_count > heads:   # a head ended, at the end of this piece
            self._in_head = False
            self._headed()

    def _headed(self) -> None:
        """A request head is complete: what follows it is its body, if it has one."""
        message, payload = self._messages[-1]
        headers = getattr(message, "headers", None)
        if headers is None:   # the parser refused it: answered 400, and the connection closed
            return
        if self._upgraded or getattr(message, "upgrade", False):
            # The gateway upgrades to nothing. Past an upgrade request (or CONNECT) aiohttp
            # stops parsing, or, after a body, goes on outside this class: so the connection
            # ends with this request's answer, once its body (if any) is in.
            self._last = True
        if getattr(message, "chunked", False):
            self._chunked = None if payload.is_eof() else payload
        else:
            try:
                self._body_left = max(0, int(headers.get("Content-Length") or 0))
            except ValueError:
                self._body_left = 0

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._listener.slow_head()
        log.info("closed a connection that did not send its request head in time")
        if self._socket is not None:
            self._socket.close()

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


class Full(asyncio.Protocol):
    """The answer to a connection past a cap: 503 `over_capacity`, then closed. What the
    client sends meanwhile is read and dropped (closing on unread bytes would reset the
    connection before the client could read the answer); it closes when the client does, or
    after `linger_s` at most (0: at once, when too many already linger — each holds an open
    file). Its request id is in the answer only: nothing is recorded."""

    def __init__(self, linger_s: float = LINGER_S,
                 done: Callable[[], None] = lambda: None) -> None:
        self._linger_s = linger_s
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        request_id = f"req_{uuid.uuid4().hex}"
        body = orjson.dumps(OverCapacity("too many connections; retry later")
                            .body(request_id))
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                        b"\r\nRetry-After: 1\r\nConnection: close\r\nX-Request-Id: "
                        + request_id.encode() + b"\r\nX-Toolgate-Decision: deny\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self._linger_s, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._transport.close()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()
        self._done()
