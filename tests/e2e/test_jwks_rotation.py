"""`auth.jwks_url` as an operator runs it: `toolgate serve` in a subprocess against an IdP
whose JWKS endpoint (an aiohttp server on 127.0.0.1 that this test controls and counts)
rotates its keys. The gateway never restarts:

- a key the IdP adds is used at once: the first token naming it makes one fetch, and a
  burst of tokens — the new key's and made-up kids — shares that one fetch; made-up kids
  cause no further fetch within `jwks_miss_refresh_s`;
- a key the IdP removes stops working once the background refresh has run;
- the IdP going away keeps the last good keys; an IdP out of reach at start leaves the
  gateway unready and refusing (401) until it answers;
- approvers' tokens on the admin port use the same keys;
- `--workers 2`: each worker fetches its own; `toolgate check` fetches, `--offline` not.

The IdP is the fake here (outside the product); the gateway, its store and its policy are
real. Tests wait on the IdP's hit count or poll a condition, never on a sleep."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Upstream, toolgate_command
from tests.e2e.net import Reply, free_port, request
from tests.e2e.profiles import default_gateway

pytestmark = pytest.mark.one_engine   # about keys, not the policy engine

NEVER_S = 86_400      # a background refresh that does not come during a test
ONCE_S = 3600         # one kid-miss fetch per test at most
REFRESH_S = 10        # the shortest background interval the config allows


@dataclass
class Idp:
    """The IdP's JWKS endpoint: serves `keys` (or 503 while `failing`), counts every GET;
    `down()` closes its port (connection refused) until `up()`."""

    keys: list[DevKey]
    failing: bool = False
    port: int = field(default_factory=free_port)
    hits: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _site: web.TCPSite | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.failing:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"keys": [k for key in self.keys for k in key.jwks["keys"]]})

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/.well-known/jwks.json", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(self._open())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="idp")
        self._thread.start()
        assert ready.wait(10)

    async def _open(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    async def _close(self) -> None:
        if self._site is not None:
            await self._site.stop()

    def _call(self, work: Callable[[], Any]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(work(), self._loop).result(10)

    def down(self) -> None:
        self._call(self._close)

    def up(self) -> None:
        self._call(self._open)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture
def idp(dev_key: DevKey) -> Iterator[Idp]:
    server = Idp([dev_key])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_b() -> DevKey:
    return DevKey.generate(kid="key-b")


@dataclass
class JwksGateway(Gateway):
    """A gateway whose keys come from the IdP; `ready_at_start=False` for one that is
    expected to start unready (it waits for its admin port to say why instead)."""

    ready_at_start: bool = True

    def wait_ready(self, timeout: float = 30) -> None:
        if self.ready_at_start:
            super().wait_ready(timeout)
            return
        wait_for(lambda: "keys" in readyz(self)[1], timeout, "/readyz naming the keys")


def jwks_gateway(directory: Path, dev_key: DevKey, upstream: Upstream, idp: Idp, *,
                 refresh_s: int, miss_s: int, **kwargs: Any) -> JwksGateway:
    base = default_gateway(directory, dev_key, upstream)
    auth = {"issuer": DEV_ISSUER, "audience": DEV_AUDIENCE, "algorithms": ["RS256"],
            "jwks_url": idp.url, "jwks_refresh_s": refresh_s, "jwks_miss_refresh_s": miss_s,
            "jwks_timeout_ms": 2000, "leeway_s": 5}
    return JwksGateway(base.directory, dev_key, base.upstream_url, base.tool_specs,
                       base.policies, extra={"auth": auth}, **kwargs)


def readyz(gw: Gateway) -> tuple[int, dict[str, Any]]:
    try:
        reply = request(gw.admin_port, "GET", "/readyz", timeout=5)
    except OSError:
        return 0, {}
    return reply.status, reply.json


def agent_token(key: DevKey, sub: str = "svc-agent") -> str:
    return key.token(sub, agent="support-bot", tenant="acme", scopes=["echo:read"])


def made_up_kid(key: DevKey) -> str:
    """A token signed by a real key but naming a kid the IdP never published."""
    now = int(time.time())
    return jwt.encode({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "mallory",
                       "scope": "echo:read", "tenant": "acme", "iat": now, "exp": now + 600},
                      key.private_pem, algorithm="RS256",
                      headers={"kid": f"made-up-{uuid.uuid4().hex[:8]}"})


def echo(gw: Gateway, token: str) -> Reply:
    return gw.call("GET", f"/echo/items/{uuid.uuid4().hex[:8]}", token=token)


def fetches(gw: Gateway, trigger: str, result: str = "ok") -> float:
    """`toolgate_jwks_fetches_total{trigger, result}` as the admin port reports it."""
    text = request(gw.admin_port, "GET", "/metrics").raw.decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "toolgate_jwks_fetches_total"
               and sample.labels == {"trigger": trigger, "result": result})


def test_a_new_key_is_fetched_once_for_a_burst(tmp_path: Path, dev_key: DevKey,
                                               key_b: DevKey, upstream: Upstream,
                                               idp: Idp) -> None:
    gw = jwks_gateway(tmp_path, dev_key, upstream, idp, refresh_s=NEVER_S, miss_s=ONCE_S)
    gw.start()
    try:
        assert idp.hits == 1                                   # fetched at start
        assert echo(gw, agent_token(dev_key)).status == 200    # key A

        idp.keys = [dev_key, key_b]   # the IdP publishes key B and signs with it
        tokens = [agent_token(key_b, f"svc-{i}") for i in range(10)] + \
            [made_up_kid(dev_key) for _ in range(10)]
        with ThreadPoolExecutor(len(tokens)) as pool:
            replies = list(pool.map(lambda t: echo(gw, t), tokens))
        assert [r.status for r in replies[:10]] == [200] * 10
        assert [r.status for r in replies[10:]] == [401] * 10
        assert {r.json["error"]["message"] for r in replies[10:]} == {"unknown key id"}
        assert idp.hits == 2          # one fetch for the whole burst

        # More made-up kids within jwks_miss_refresh_s: refused at once, nothing fetched.
        for _ in range(5):
            assert echo(gw, made_up_kid(dev_key)).status == 401
        assert idp.hits == 2
        assert fetches(gw, "kid_miss") == 1
        assert echo(gw, agent_token(dev_key)).status == 200    # key A still works
        # SECURITY: what the IdP served is never in the gateway's log.
        assert dev_key.jwks["keys"][0]["n"][:24] not in gw.log()
        assert key_b.jwks["keys"][0]["n"][:24] not in gw.log()
    finally:
        gw.stop()


def test_keys_come_and_go_without_a_restart(tmp_path: Path, dev_key: DevKey, key_b: DevKey,
                                            upstream: Upstream, idp: Idp) -> None:
    idp.failing = True            # the IdP is out of reach when the gateway starts
    gw = jwks_gateway(tmp_path, dev_key, upstream, idp, refresh_s=REFRESH_S, miss_s=ONCE_S,
                      ready_at_start=False)
    gw.start()
    try:
        status, body = readyz(gw)
        assert status == 503
        assert body["status"] == "unready"
        assert "auth.jwks_url" in body["keys"]
        assert "answered 503" in body["keys"]
        refused = echo(gw, agent_token(dev_key))
        assert refused.status == 401
        assert refused.json["error"]["message"] == "no verification keys loaded yet"
        [record] = gw.records_for(refused.request_id)
        assert (record["code"], record["stage"]) == ("unauthenticated", "authenticate")

        idp.failing = False           # the IdP answers: the background retry loads the set
        wait_for(lambda: readyz(gw)[0] == 200, 30, "ready once the IdP answers")
        assert echo(gw, agent_token(dev_key)).status == 200

        idp.keys = [key_b]            # key A retired, key B in use
        # Key A is refused once a background refresh has run (its cached tokens too).
        token_a = agent_token(dev_key)
        refreshes = fetches(gw, "refresh")
        wait_for(lambda: echo(gw, token_a).status == 401, 40, "key A refused")
        assert fetches(gw, "refresh") > refreshes
        assert echo(gw, agent_token(key_b)).status == 200
        alice = approver(key_b, "alice", "billing-approver")
        assert admin(gw, "GET", "/v1/approvals", alice).status == 200

        # The IdP goes away: the refreshes fail, the last good keys stay.
        failed = fetches(gw, "refresh", "error")
        idp.down()
        wait_for(lambda: fetches(gw, "refresh", "error") > failed, 40, "a failed refresh")
        assert echo(gw, agent_token(key_b)).status == 200
        assert admin(gw, "GET", "/v1/approvals", alice).status == 200
        status, body = readyz(gw)
        assert status == 200          # it has keys: ready, and says what went wrong
        assert body["keys"]["failures"] >= 1
        assert "ClientConnectorError" in body["keys"]["last_error"]
        assert "keeping the last good keys (1, revision" in gw.log()
        idp.up()
    finally:
        gw.stop()


def test_an_approver_s_new_key_works_on_the_admin_port(tmp_path: Path, dev_key: DevKey,
                                                       key_b: DevKey, upstream: Upstream,
                                                       idp: Idp) -> None:
    gw = jwks_gateway(tmp_path, dev_key, upstream, idp, refresh_s=NEVER_S, miss_s=ONCE_S)
    gw.start()
    try:
        assert admin(gw, "GET", "/v1/approvals",
                     approver(dev_key, "alice", "billing-approver")).status == 200
        idp.keys = [dev_key, key_b]
        bob = approver(key_b, "bob", "billing-approver")
        listed = admin(gw, "GET", "/v1/approvals", bob)
        assert listed.status == 200
        assert idp.hits == 2                 # the kid miss, on the admin port
        # The agent port shares the verifier: key B is known there too, with no fetch.
        assert echo(gw, agent_token(key_b)).status == 200
        stranger = admin(gw, "GET", "/v1/approvals", made_up_kid(dev_key))
        assert stranger.status == 401
        assert idp.hits == 2
    finally:
        gw.stop()


def test_each_worker_fetches_its_own(tmp_path: Path, dev_key: DevKey, upstream: Upstream,
                                     idp: Idp) -> None:
    gw = jwks_gateway(tmp_path, dev_key, upstream, idp, refresh_s=NEVER_S, miss_s=ONCE_S,
                      serve_args=("--workers", "2"), environ={"TMPDIR": str(tmp_path)})
    gw.start()
    try:
        assert idp.hits == 2                 # the supervisor fetched nothing
        # Each call is a new connection, spread over the workers by the kernel; whichever
        # takes it verifies with the set it fetched itself.
        assert {echo(gw, agent_token(dev_key)).status for _ in range(12)} == {200}
    finally:
        assert gw.stop() == 0


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env["UPSTREAM_TOKEN"] = "x"
    return subprocess.run([*toolgate_command(), "check", "--config", str(config), *args],
                          env=env, text=True, capture_output=True, timeout=60, check=False)


def test_check_fetches_the_keys_and_offline_does_not(tmp_path: Path, dev_key: DevKey,
                                                     upstream: Upstream, idp: Idp) -> None:
    gw = jwks_gateway(tmp_path, dev_key, upstream, idp, refresh_s=NEVER_S, miss_s=ONCE_S)
    gw.directory.mkdir(parents=True, exist_ok=True)
    config = gw.directory / "toolgate.yaml"
    config.write_bytes(orjson.dumps(gw.config()))   # JSON is YAML
    ok = check(config)
    assert ok.returncode == 0, ok.stderr
    assert idp.hits == 1
    assert check(config, "--offline").returncode == 0
    assert idp.hits == 1
    idp.failing = True
    failed = check(config)
    assert failed.returncode == 1
    assert f"auth.jwks_url {idp.url}: answered 503" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
