"""End-to-end harness: a real `toolgate serve` subprocess and a fake upstream on 127.0.0.1.

The upstream is the one fake allowed: it stands for the internal APIs outside the product.
It runs its own event loop on a thread and records every request exactly as it arrived
(raw path, headers, body), so tests can assert on what the gateway sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from multidict import CIMultiDict

from gateway.audit.files import family
from gateway.devtokens import DevKey
from tests.e2e.net import Reply, free_port, request
from tests.e2e.opa import OpaServer

UPSTREAM_SECRET = "upstream-secret-9f8e7d6c5b4a"
# The policy engine of the gateways the suite starts now: `tests/e2e/conftest.py` runs the
# suite once per engine (`embedded`, and `opa` where the real OPA engine is installed).
ENGINE = {"name": "embedded"}
# Every gateway the suite started: at the end, every byte each wrote is searched for secrets.
STARTED: list[Gateway] = []


@dataclass
class Gate:
    """Set from the test's thread, awaited on the upstream's loop."""

    loop: asyncio.AbstractEventLoop
    arrived: threading.Event = field(default_factory=threading.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def wait_arrived(self, timeout: float = 15) -> None:
        assert self.arrived.wait(timeout), "the request never reached the upstream"

    def open(self) -> None:
        self.loop.call_soon_threadsafe(self.opened.set)


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Upstream:
    """A recording HTTP server: `/v1/status/<n>` answers n; `/v1/slow/...` holds a request
    with an `X-Gate: <name>` header until the test opens that gate (`gate`), or else sleeps
    `X-Delay` seconds (default 3) — so a test waits on an event, never on a race."""

    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _gates: dict[str, Gate] = field(default_factory=dict)

    def gate(self, name: str) -> Gate:
        """A gate requests with `X-Gate: name` wait at; open it to let them answer."""
        assert self._loop is not None, "start() the upstream first"
        gate = self._gates[name] = Gate(self._loop)
        return gate

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.raw_path,
                              CIMultiDict(request.headers), body))
        path = request.rel_url.path
        gate = self._gates.get(request.headers.get("X-Gate", ""))
        if path.startswith("/v1/slow") and gate is not None:
            gate.arrived.set()
            await gate.opened.wait()
        elif path.startswith("/v1/slow"):
            await asyncio.sleep(float(request.headers.get("X-Delay", "3")))
        if path.startswith("/v1/status/"):
            status = int(path.rsplit("/", 1)[1])
            return web.json_response({"status": status}, status=status)
        if path == "/v1/refunds":
            return web.json_response({"refund_id": f"re_{len(self.seen)}", "status": "created"},
                                     status=201, headers={
                                         "Keep-Alive": "timeout=99",
                                         "Proxy-Authenticate": 'Basic realm="up"',
                                         "X-Upstream": "billing"})
        return web.json_response({"method": request.method, "path": request.raw_path,
                                  "n": len(self.seen)}, headers={"X-Upstream": "echo"})

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="upstream")
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def paths(self) -> list[str]:
        return [s.raw_path for s in self.seen]


class FaultyUpstream:
    """A raw TCP upstream that misbehaves by path: `/ok` answers 200, `/hang` never answers,
    `/reset` resets the connection, `/garbage` answers bytes that are not HTTP, `/half`
    sends half a response and hangs up. For the chaos tests: faults outside the product."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="faulty")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests += 1
            path = head.split(b" ", 2)[1]
            if path == b"/ok":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 11\r\nConnection: close\r\n\r\n{\"ok\":true}")
            elif path == b"/hang":
                time.sleep(5)
            elif path == b"/reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            elif path == b"/garbage":
                conn.sendall(b"\x00\xffthis is not HTTP at all\r\n\r\n")
            elif path == b"/half":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")

    def stop(self) -> None:
        self._stopping = True
        self._sock.close()


def toolgate_command() -> list[str]:
    """The console script installed next to this interpreter, as the README runs it."""
    script = Path(sys.executable).parent / "toolgate"
    if script.exists():
        return [str(script)]
    found = shutil.which("toolgate")
    assert found, "the toolgate console script is not installed"
    return [found]


@dataclass
class Gateway:
    """`toolgate serve --config <dir>/toolgate.yaml` in a subprocess."""

    directory: Path
    key: DevKey
    upstream_url: str
    tool_specs: list[Path]
    policies: list[Path]
    extra: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_upstreams: Mapping[str, str] = field(default_factory=dict)
    # The policy engine: the suite's current one (`ENGINE`), set by tests/e2e/conftest.py.
    engine: str = field(default_factory=lambda: ENGINE["name"])
    opa: OpaServer | None = None
    serve_args: tuple[str, ...] = ()    # more `toolgate serve` arguments (`--workers 2`)

    @property
    def audit_file(self) -> Path:
        return self.directory / "audit" / "toolgate.jsonl"

    @property
    def log_file(self) -> Path:
        return self.directory / "gateway.log"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}",
            "tool_specs": [str(p) for p in self.tool_specs],
            "policies": [str(p) for p in self.policies],
            "store": "sqlite:///state/toolgate.db",
            "auth": {"issuer": "https://idp.example.com", "audience": "toolgate",
                     "algorithms": ["RS256"], "jwks_file": "keys/jwks.json", "leeway_s": 5},
            "upstreams": {
                name: {"url": self.upstream_url,
                       "credential": {"header": "Authorization", "prefix": "Bearer ",
                                      "env": "UPSTREAM_TOKEN"}}
                for name in ("crm", "billing", "hr", "echo")
            },
            "audit": {"file": "audit/toolgate.jsonl"},
        }
        config["upstreams"]["down"] = {"url": f"http://127.0.0.1:{closed_port()}"}
        for name, url in self.extra_upstreams.items():
            config["upstreams"][name] = {"url": url}
        for key, value in self.extra.items():
            config[key] = value
        if self.engine == "opa":
            # The same policy files, served by the real OPA engine; a generous timeout, so
            # a busy CI machine is not mistaken for an OPA that does not answer.
            url = self.opa.url if self.opa is not None else f"http://127.0.0.1:{closed_port()}"
            config["policy"] = {"timeout_ms": 2000, **config.get("policy", {}),
                                "engine": "opa", "opa_url": url}
        return config

    def start(self) -> None:
        STARTED.append(self)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key.save(self.directory / "keys")
        if self.engine == "opa" and (self.opa is None or not self.opa.running):
            self.opa = OpaServer(self.policies, self.directory / "opa.log")
            self.opa.start()
        config = self.directory / "toolgate.yaml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
        env.update({"UPSTREAM_TOKEN": UPSTREAM_SECRET, **self.environ})
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*toolgate_command(), "serve", "--config", str(config), *self.serve_args],
                env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if request(self.admin_port, "GET", "/readyz", timeout=2).status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM; then its OPA server, if any, stops too (`start` starts another)."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else 0
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        finally:
            if self.opa is not None:
                self.opa.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing — a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return request(self.port, method, path, **kwargs)

    def records(self) -> list[dict[str, Any]]:
        """Every record of the gateway's chain, its rotated files included, in order."""
        return [json.loads(line) for path in family(self.audit_file)
                for line in path.read_bytes().splitlines()]

    def records_for(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["decision_id"] == request_id]


def closed_port() -> int:
    """A port nothing listens on (bound and released; nothing else binds it in a test run)."""
    return free_port()


@contextlib.contextmanager
def running(gateway: Gateway) -> Iterator[Gateway]:
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
