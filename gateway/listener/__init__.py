"""The listening sockets: aiohttp's HTTP server, with the limits a gateway needs against
slow and hostile clients, on both ports.

- **Connection caps.** Past `max_connections` open connections on the port, or past
  `max_connections_per_client` from one client address (the admin port's, so that one
  client cannot take the room of the kubelet's probes), a new connection is answered `503
  over_capacity` and closed at once: counted, never audited (refusing costs nothing). Every
  loopback address counts as one client: whoever shares the host (the agent, in the pod)
  can pick any source address in 127.0.0.0/8.
- **Header timeout.** A request head must arrive whole within `header_timeout` of its first
  byte, or the connection is closed (a client trickling headers holds nothing for long) —
  a head pipelined behind another request too.
- **Idle timeout.** A connection with no request in progress is closed after
  `idle_timeout` — at its start too, so a connection that never sends is not kept.
- **Send timeout.** What the gateway has written must be taken by the client within
  `send_timeout` of the gateway first having to wait for it, or the connection is aborted
  and the response dropped: a client that stops reading holds neither a connection nor a
  response for long. The clock runs only while the client is behind, so the time a call
  takes upstream is not counted, and neither is a streamed response's quiet time.
- **Body timeout** is the entrances' (`gateway.entrances.rest`, `gateway.admin.api`): a
  body must arrive within `body_timeout`.
- **Header limits.** At most `max_headers` header fields of at most `max_header_bytes`.
- **Malformed requests** — whatever aiohttp's parser refuses (bare LF line endings, a
  header too long, two Content-Type headers) — are answered with the JSON error envelope
  (`bad_request`) and passed to `refused`, which audits them (the agent port: one decision
  record each) or aggregates them (the admin port). What the client sent is never logged.

**Draining** (`gateway.listener.drain`): on SIGTERM the socket stops accepting, idle
connections are closed, calls in flight finish within the window, and what is left is
cancelled.

With `reuse_port`, several processes (`toolgate serve --workers N`) listen on one port and
the kernel spreads the connections across them; each process's caps are its own.

aiohttp's own `TCPSite` has none of these, so the socket is opened here and each
connection gets a `gateway.listener.connection.Connection`: aiohttp's `RequestHandler`,
plus the timers and the JSON refusal. It reads aiohttp's private fields `_request_count`,
`_messages`, `_upgraded`, `_reading_paused`, `_max_msg_queue_size`, `_close`,
`_force_close`, `_waiter` and `_task_handler`; the pinned aiohttp release and the tests
keep that honest.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.config import Address
from gateway.core.errors import GatewayError
from gateway.listener.connection import LINGER_S, Connection, Full, log

MAX_LINGERING = 64   # refused connections left open to read their answer (per port)
# What to do with a request the HTTP parser refused: audit (or count) it, and give the
# request id its answer carries.
Refused = Callable[[BaseRequest, GatewayError], str]
# Counts an event on this port (a connection turned away, a head too slow, ...).
Count = Callable[[], None]


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    idle_timeout_s: float
    max_headers: int
    max_header_bytes: int
    send_timeout_s: float = 30.0
    max_connections_per_client: int | None = None   # None: the port's cap only


def client_of(peername: Any) -> str:
    """The client a connection counts against: its address, every loopback address as one
    (and an IPv4 address mapped into IPv6 as itself)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "loopback" if ip.is_loopback else str(ip)


class Listener:
    """A listening socket for one set-up `AppRunner`, with `limits` on its connections."""

    def __init__(self, runner: web.AppRunner, address: Address, limits: ConnectionLimits,
                 refused: Refused, *, turned_away: Count = lambda: None,
                 slow_head: Count = lambda: None,
                 send_timed_out: Count = lambda: None, reuse_port: bool = False) -> None:
        self.limits = limits
        # SO_REUSEPORT: `toolgate serve --workers N` binds the agent port once per worker,
        # and the kernel spreads new connections across them (`gateway.workers`).
        self.reuse_port = reuse_port
        self._runner = runner
        self._address = address
        self.refused = refused
        self.turned_away = turned_away   # a connection refused at a cap
        self.slow_head = slow_head       # a connection closed: its head took too long
        self.send_timed_out = send_timed_out  # aborted: its client did not read in time
        self._open: set[Connection] = set()
        self._clients: dict[str, int] = {}
        self._lingering = 0    # refused connections still open (see `full`)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, handler: Connection, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in, or turn it away (False) when it is past a cap."""
        per_client = self.limits.max_connections_per_client
        client = None
        if per_client is not None:
            client = client_of(transport.get_extra_info("peername"))
            if self._clients.get(client, 0) >= per_client:
                self.turned_away()
                return False
        if len(self._open) >= self.limits.max_connections:
            self.turned_away()
            return False
        if client is not None:
            self._clients[client] = self._clients.get(client, 0) + 1
            handler.client = client
        self._open.add(handler)
        return True

    def closed(self, handler: Connection) -> None:
        if handler not in self._open:
            return
        self._open.discard(handler)
        if handler.client is not None:
            left = self._clients.pop(handler.client) - 1
            if left:
                self._clients[handler.client] = left

    def full(self) -> Full:
        """The answer to a connection past a cap. At most `MAX_LINGERING` of them linger
        at a time; past that one is closed as soon as its answer is written, so a flood of
        refused connections cannot hold open files the caps did not count."""
        if self._lingering >= MAX_LINGERING:
            return Full(linger_s=0)
        self._lingering += 1

        def done() -> None:
            self._lingering -= 1
        return Full(done=done)

    def _connection(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None, "set the runner up first"
        if len(self._open) >= self.limits.max_connections:   # `admit` decides; this only
            self.turned_away()                               # spares building a handler
            return self.full()                               # under a flood
        return Connection(server, self, loop=asyncio.get_running_loop(),
                        keepalive_timeout=self.limits.idle_timeout_s,
                        max_headers=self.limits.max_headers,
                        max_field_size=self.limits.max_header_bytes,
                        max_line_size=self.limits.max_header_bytes,
                        # After answering a request whose body was not read (too large, too
                        # slow), the rest is read and dropped this long before closing.
                        lingering_time=LINGER_S, access_log=None, logger=log)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            self._connection, self._address.host, self._address.port, reuse_address=True,
            reuse_port=self.reuse_port or None)

    def connections(self) -> list[Connection]:
        """The connections open now (a copy)."""
        return list(self._open)

    def stop_accepting(self) -> None:
        """Close the listening socket: a new connection is refused; open ones go on
        (`gateway.listener.drain`)."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
