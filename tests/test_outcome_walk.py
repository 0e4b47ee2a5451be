"""The outcome walk: every `ReasonCode` has a scenario that produces it, through each
entrance, with the status DESIGN gives it and exactly one decision record for the call
(approval refusals: one `refused` record). A code without a scenario fails the suite.

Each scenario gets a fresh in-process gateway on the real listener (real store, real Rego,
real sockets to a loopback upstream) and the settable clock, so nothing here races a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway import pipeline
from gateway.admin.api import RUNTIME_OF
from gateway.app import build_apps
from gateway.approvals.model import ApprovalStatus
from gateway.config import Address
from gateway.core.context import CallContext
from gateway.core.errors import ReasonCode
from gateway.core.stage import Stage
from gateway.devtokens import DevKey
from gateway.listener import ConnectionLimits, Listener, Refused
from gateway.runtime import Runtime
from gateway.serve import admin_port_refusals, agent_port_refusals, connection_limits
from gateway.state.idempotency import KeyClaim, Scope, fingerprint
from gateway.web import RUNTIME
from tests.support import (
    E2E,
    ROOT,
    UPSTREAM_SECRET,
    FakeClock,
    Recorder,
    config,
    unwritable,
    upstream_server,
)

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}


@dataclass
class Outcome:
    status: int
    code: str
    reasons: list[str]
    request_id: str | None


class Malformed(StrEnum):
    """Requests an entrance refuses before there is a tool call; each entrance knows how to
    make its own kind of each."""

    UNDECLARED = "undeclared"          # no such tool
    ARGUMENT_TWICE = "argument_twice"  # one name, two values
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    MEDIA_TYPE = "media_type"
    NOT_HTTP = "not_http"              # refused by the HTTP parser itself
    SLOW_BODY = "slow_body"            # a body that never finishes arriving


class Door(Protocol):
    """One entrance, as an agent uses it."""

    name: str

    async def call(self, w: World, tool: str, args: dict[str, Any], *,
                   headers: dict[str, str]) -> Outcome: ...

    async def malformed(self, w: World, what: Malformed) -> Outcome: ...


class Rest:
    """The REST entrance: `route.method route.path`, arguments in the path, the query (for
    a GET) or the JSON body, the key and run id in their headers."""

    name = "rest"

    async def call(self, w: World, tool: str, args: dict[str, Any], *,
                   headers: dict[str, str]) -> Outcome:
        spec = w.rt.bundles.current.tools[tool]
        path = spec.route.render({n: str(args[n]) for n in spec.route.names})
        rest = {k: v for k, v in args.items() if k not in spec.route.names}
        body = None
        if spec.method == "GET":
            path += ("?" + urlencode(rest)) if rest else ""
        else:
            body = orjson.dumps(rest)
            headers = {"Content-Type": "application/json", **headers}
        return await w.send(spec.method, path, body, headers)

    async def malformed(self, w: World, what: Malformed) -> Outcome:
        json_type = {"Content-Type": "application/json"}
        match what:
            case Malformed.UNDECLARED:
                return await w.send("POST", "/admin/users", b"{}", json_type)
            case Malformed.ARGUMENT_TWICE:
                return await w.send("GET", "/echo/items/abc?item_id=other", None, {})
            case Malformed.TOO_LARGE:
                return await w.send("POST", "/echo/items",
                                    b'{"name": "' + b"x" * 200 + b'"}', json_type)
            case Malformed.NOT_JSON:
                return await w.send("POST", "/echo/items", b"{not json", json_type)
            case Malformed.MEDIA_TYPE:
                return await w.send("POST", "/echo/items", b"name=a&count=1",
                                    {"Content-Type": "application/x-www-form-urlencoded"})
            case Malformed.NOT_HTTP:   # bare LF line endings
                return await w.raw(b"GET /echo/items/abc HTTP/1.1\nHost: x\nAuthorization: "
                                   + (w.credential or "").encode() + b"\n\n")
            case Malformed.SLOW_BODY:  # promises 100 bytes, sends 10, waits
                return await w.raw(b"POST /echo/items HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                   + (w.credential or "").encode() + b"\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: 100\r\n\r\n"
                                   b'{"name": "')


ENTRANCES: list[Door] = [Rest()]  # each entrance runs every scenario


@dataclass
class Served:
    """One app on a real `Listener`, and a client session to it."""

    app: web.Application
    url: str
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.session.request(method, URL(self.url + path, encoded=True),
                                          **kwargs)


@dataclass
class World:
    door: Door
    agent: Served
    admin: Served
    key: DevKey
    clock: FakeClock
    recorder: Recorder
    token: str
    decision_ids: list[str] = field(default_factory=list)
    credential: str | None = None   # the Authorization of the next call; "" for none

    @property
    def rt(self) -> Runtime:
        return self.agent.app[RUNTIME]

    def approver(self, sub: str, *roles: str, tenant: str = "acme") -> str:
        return self.key.token(sub, tenant=tenant, roles=roles, scopes=["toolgate:approve"])

    async def call(self, tool: str, args: dict[str, Any], *, key: str | None = None,
                   run: str | None = None, token: str | None = None,
                   anonymous: bool = False, headers: dict[str, str] | None = None) -> Outcome:
        """A tool call through the door under test, as the agent unless told otherwise."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Idempotency-Key"] = key
        if run is not None:
            hdrs["X-Agent-Run-Id"] = run
        self.credential = "" if anonymous else f"Bearer {token or self.token}"
        return await self.door.call(self, tool, args, headers=hdrs)

    async def malformed(self, what: Malformed) -> Outcome:
        self.credential = f"Bearer {self.token}"
        return await self.door.malformed(self, what)

    async def send(self, method: str, path: str, body: bytes | None,
                   headers: dict[str, str]) -> Outcome:
        """The HTTP request a door makes, with the credential of the call."""
        hdrs = dict(headers)
        if self.credential:
            hdrs["Authorization"] = self.credential
        resp = await self.agent.request(method, path, data=body, headers=hdrs)
        return await _outcome(resp, self.decision_ids)

    async def raw(self, data: bytes) -> Outcome:
        """Bytes as they are, on a connection of their own: the answer, whatever it is."""
        host, port = self.agent.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = orjson.loads(await reader.readexactly(length))
        finally:
            writer.close()
        error = body["error"]
        self.decision_ids.append(error["request_id"])
        return Outcome(status, error["code"], error.get("reasons", []), error["request_id"])

    async def vote(self, approval_id: str, token: str | None, verb: str = "approve") -> Outcome:
        body = {"reason": "no"} if verb == "reject" else {}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await self.admin.request("POST", f"/v1/approvals/{approval_id}/{verb}",
                                        json=body, headers=headers)
        return await _outcome(resp, None)

    async def hold(self, tool: str = "create_refund_request", key: str = "held",
                   args: dict[str, Any] | None = None) -> str:
        held = await self.call(tool, args or {**REFUND, "amount": 250}, key=key)
        assert held.status == 202, held
        return str(next(r["approval_id"] for r in _records(self.rt)
                        if r["decision_id"] == held.request_id))


async def _outcome(resp: Any, decision_ids: list[str] | None) -> Outcome:
    raw = await resp.read()
    body = orjson.loads(raw) if raw else {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    request_id = resp.headers.get("X-Request-Id")
    if decision_ids is not None and request_id:
        decision_ids.append(request_id)
    return Outcome(resp.status, error.get("code", ""), error.get("reasons", []), request_id)


def _records(rt: Runtime) -> list[dict[str, Any]]:
    path = rt.settings.audit.file
    assert path is not None
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


Scenario = Callable[[World], Awaitable[Outcome]]
SCENARIOS: dict[ReasonCode, tuple[int, Scenario, dict[str, Any]]] = {}


def scenario(code: ReasonCode, status: int, *, aggregated: bool = False,
             unrecorded: bool = False, sink_down: bool = False,
             **world: Any) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[code] = (status, fn, {**world, "aggregated": aggregated,
                                        "unrecorded": unrecorded, "sink_down": sink_down})
        return fn
    return register


@scenario(ReasonCode.POLICY_DENIED, 403)
async def _red_tier(w: World) -> Outcome:
    return await w.call("change_payroll_bank", {"employee_id": "emp_0042", "tenant_id": "acme",
                                                "iban": "DE89370400440532013000"}, key="k")


@scenario(ReasonCode.POLICY_ERROR, 403, policies=[str(E2E / "policies_broken")])
async def _malformed_policy(w: World) -> Outcome:
    return await w.call("echo_post", {"name": "a", "count": 1})


@scenario(ReasonCode.TOOL_NOT_ALLOWED, 403)
async def _undeclared(w: World) -> Outcome:
    return await w.malformed(Malformed.UNDECLARED)


@scenario(ReasonCode.UNAUTHENTICATED, 401)
async def _no_token(w: World) -> Outcome:
    return await w.call("echo_item", {"item_id": "abc"}, anonymous=True)


@scenario(ReasonCode.INSUFFICIENT_SCOPE, 403)
async def _no_scope(w: World) -> Outcome:
    reader = w.key.token("reader", tenant="acme", scopes=["orders:read"])
    return await w.call("echo_item", {"item_id": "abc"}, token=reader)


@scenario(ReasonCode.SCHEMA_INVALID, 422)
async def _bad_arguments(w: World) -> Outcome:
    return await w.call("echo_post", {"name": "a", "count": "lots"})


@scenario(ReasonCode.INVALID_ARGUMENTS, 400)
async def _given_twice(w: World) -> Outcome:
    return await w.malformed(Malformed.ARGUMENT_TWICE)


@scenario(ReasonCode.IDEMPOTENCY_KEY_REQUIRED, 400)
async def _no_key(w: World) -> Outcome:
    return await w.call("create_refund_request", {**REFUND, "amount": 5})


@scenario(ReasonCode.IDEMPOTENCY_KEY_INVALID, 400)
async def _long_key(w: World) -> Outcome:
    return await w.call("create_refund_request", {**REFUND, "amount": 5}, key="k" * 256)


@scenario(ReasonCode.IDEMPOTENCY_KEY_REUSED, 422)
async def _reused(w: World) -> Outcome:
    first = await w.call("create_refund_request", {**REFUND, "amount": 5}, key="same")
    assert first.status == 201
    return await w.call("create_refund_request", {**REFUND, "amount": 6}, key="same")


@scenario(ReasonCode.IDEMPOTENCY_IN_FLIGHT, 409)
async def _in_flight(w: World) -> Outcome:
    args = {**REFUND, "amount": 5}
    mine = fingerprint("POST", "create_refund_request", args, "svc-agent")
    claim = KeyClaim(Scope("acme", "create_refund_request", "busy"), mine, "req_other",
                     w.clock.time() + 60)
    assert await w.rt.store.commit_forward(claim, None, w.clock.time()) is None
    return await w.call("create_refund_request", args, key="busy")


@scenario(ReasonCode.BODY_TOO_LARGE, 413, limits={"max_body_bytes": 100})
async def _too_large(w: World) -> Outcome:
    return await w.malformed(Malformed.TOO_LARGE)


@scenario(ReasonCode.INVALID_JSON, 400)
async def _not_json(w: World) -> Outcome:
    return await w.malformed(Malformed.NOT_JSON)


@scenario(ReasonCode.UNSUPPORTED_MEDIA_TYPE, 415)
async def _form(w: World) -> Outcome:
    return await w.malformed(Malformed.MEDIA_TYPE)


@scenario(ReasonCode.POLICY_UNAVAILABLE, 503)
async def _slow_policy(w: World) -> Outcome:
    w.clock.step_s = 0.2  # every evaluation now appears to take longer than 100 ms
    return await w.call("echo_item", {"item_id": "abc"})


@scenario(ReasonCode.STORE_UNAVAILABLE, 503)
async def _store_down(w: World) -> Outcome:
    await w.rt.store.close()
    return await w.call("create_refund_request", {**REFUND, "amount": 5}, key="k")


@scenario(ReasonCode.AUDIT_UNAVAILABLE, 503, sink_down=True)
async def _audit_down(w: World) -> Outcome:
    path = w.rt.settings.audit.file
    assert path is not None
    with unwritable(path):   # every write fails, through the open descriptor too
        return await w.call("echo_item", {"item_id": "abc"})


@scenario(ReasonCode.UPSTREAM_ERROR, 502)
async def _upstream_down(w: World) -> Outcome:
    return await w.call("down_tool", {})


@scenario(ReasonCode.UPSTREAM_TIMEOUT, 504)
async def _upstream_slow(w: World) -> Outcome:
    return await w.call("slow_tool", {}, headers={"X-Gate": "never"})


@scenario(ReasonCode.BUDGET_EXCEEDED, 429, budgets={"max_tool_calls": 1})
async def _over_budget(w: World) -> Outcome:
    assert (await w.call("echo_item", {"item_id": "a"}, run="run-walk")).status == 201
    return await w.call("echo_item", {"item_id": "b"}, run="run-walk")


@scenario(ReasonCode.KILLED, 403)
async def _killed(w: World) -> Outcome:
    resp = await w.admin.request("POST", "/v1/killswitch",
                                 json={"scope": "tool:echo_item", "reason": "incident"},
                                 headers={"Authorization": f"Bearer {w.approver('ops')}"})
    assert resp.status == 200
    return await w.call("echo_item", {"item_id": "abc"})


@scenario(ReasonCode.UNKNOWN_SCOPE, 422)
async def _kill_a_typo(w: World) -> Outcome:
    """A kill switch for a tool that is not loaded would stop nothing: refused, recorded."""
    resp = await w.admin.request("POST", "/v1/killswitch",
                                 json={"scope": "tool:echo_itme", "reason": "incident"},
                                 headers={"Authorization": f"Bearer {w.approver('ops')}"})
    return await _outcome(resp, None)


@scenario(ReasonCode.OUTCOME_UNKNOWN, 502)
async def _outcome_unknown(w: World) -> Outcome:
    approval_id = await w.hold()
    for to in (ApprovalStatus.APPROVED, ApprovalStatus.EXECUTING,
               ApprovalStatus.OUTCOME_UNKNOWN):  # as a crash mid-send leaves it
        moved = await w.rt.store.transition(approval_id, frozenset(ApprovalStatus), to,
                                            w.clock.time())
        assert moved is not None
    return await w.call("create_refund_request", {**REFUND, "amount": 250}, key="held")


@scenario(ReasonCode.INTERNAL_ERROR, 500)
async def _internal(w: World) -> Outcome:
    async def broken(ctx: CallContext, rt: Runtime) -> None:
        raise ZeroDivisionError

    stages = dict(pipeline.STAGES)
    saved, stages[Stage.VALIDATE] = pipeline.STAGES, broken
    pipeline.STAGES = tuple(stages.items())
    try:
        return await w.call("echo_item", {"item_id": "abc"})
    finally:
        pipeline.STAGES = saved


@scenario(ReasonCode.BAD_REQUEST, 400)
async def _not_http(w: World) -> Outcome:
    return await w.malformed(Malformed.NOT_HTTP)


@scenario(ReasonCode.REQUEST_TIMEOUT, 408, limits={"body_timeout_ms": 200})
async def _slow_body(w: World) -> Outcome:
    return await w.malformed(Malformed.SLOW_BODY)


@scenario(ReasonCode.RATE_LIMITED, 429, aggregated=True)
async def _probing_the_admin_port(w: World) -> Outcome:
    """Without a valid token the admin port answers 401 — until a client has had its burst,
    then 429; all of it is one aggregate record, not a record each."""
    outcome = await w.vote("apr_any", None)
    assert outcome.code == "unauthenticated"
    while outcome.status != 429:
        outcome = await w.vote("apr_any", None)
    return outcome


@scenario(ReasonCode.OVER_CAPACITY, 503, unrecorded=True, limits={"max_connections": 1})
async def _past_the_cap(w: World) -> Outcome:
    """A connection past the port's cap is answered before it can send a request: its
    answer has a request id, but nothing is recorded (a flood would fill the disk)."""
    held = await w.send("GET", "/echo/items/a", None, {})  # the one connection, kept alive
    assert held.status != 503, held
    return await w.raw(b"GET /echo/items/b HTTP/1.1\r\nHost: x\r\n\r\n")


@scenario(ReasonCode.BUNDLE_INVALID, 422,
          policies=[str(ROOT / "policies"), str(E2E / "policies_approvals"), "more-policies"])
async def _reload_refused(w: World) -> Outcome:
    """A reload whose policies do not compile: refused (recorded), the old bundle serves."""
    (w.rt.settings.base_dir / "more-policies" / "broken.rego").write_text(
        "package toolgate\n\ndecision := {\n")
    resp = await w.admin.request("POST", "/v1/policy/reload", headers={
        "Authorization": f"Bearer {w.approver('alice')}"})
    return await _outcome(resp, None)


@scenario(ReasonCode.NOT_FOUND, 404)
async def _no_such_approval(w: World) -> Outcome:
    return await w.vote("apr_nope", w.approver("alice", "billing-approver"))


@scenario(ReasonCode.SELF_APPROVAL, 403)
async def _self(w: World) -> Outcome:
    approval_id = await w.hold()
    return await w.vote(approval_id, w.approver("svc-agent", "billing-approver",
                                                tenant="globex"))


@scenario(ReasonCode.APPROVER_ROLE_REQUIRED, 403)
async def _no_role(w: World) -> Outcome:
    return await w.vote(await w.hold(), w.approver("alice", "support"))


@scenario(ReasonCode.ALREADY_APPROVED_BY_YOU, 409)
async def _twice(w: World) -> Outcome:
    approval_id = await w.hold("two_person", args={"tenant_id": "acme", "amount": 5})
    alice = w.approver("alice", "finance")
    assert (await w.vote(approval_id, alice)).status == 200
    return await w.vote(approval_id, alice)


@scenario(ReasonCode.APPROVAL_NOT_PENDING, 409)
async def _decided(w: World) -> Outcome:
    approval_id = await w.hold()
    alice = w.approver("alice", "billing-approver")
    assert (await w.vote(approval_id, alice, "reject")).status == 200
    return await w.vote(approval_id, alice)


@scenario(ReasonCode.APPROVAL_EXPIRED, 409)
async def _expired(w: World) -> Outcome:
    approval_id = await w.hold()
    w.clock.advance(3601)
    return await w.vote(approval_id, w.approver("alice", "billing-approver"))


def test_every_reason_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(ReasonCode), sorted(set(ReasonCode) - set(SCENARIOS))


@asynccontextmanager
async def served(app: web.Application, limits: ConnectionLimits,
                 refused: Refused) -> AsyncIterator[tuple[web.AppRunner, Listener]]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    listener = Listener(runner, Address("127.0.0.1", 0), limits, refused)
    await listener.start()
    try:
        yield runner, listener
    finally:
        await listener.stop()
        await runner.cleanup()


@pytest.fixture
async def world(request: pytest.FixtureRequest, tmp_path: Path,
                dev_key: DevKey, agent_token: str) -> AsyncIterator[World]:
    code = request.node.callspec.params["code"]
    door = request.node.callspec.params["door"]
    clock = FakeClock()
    options = {k: v for k, v in SCENARIOS[code][2].items()
               if k not in ("aggregated", "unrecorded", "sink_down")}
    (tmp_path / "more-policies").mkdir()   # where a scenario may add a policy (a reload)
    async with upstream_server() as (recorder, url):
        settings = config(tmp_path, dev_key, url, approvals={"sweep_interval_ms": 3_600_000},
                          **options)
        app, admin = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, clock)
        admin[RUNTIME_OF] = lambda: app.get(RUNTIME)
        agent_limits = connection_limits(settings, settings.max_connections)
        admin_limits = connection_limits(settings, settings.admin_max_connections)
        async with served(app, agent_limits, agent_port_refusals(app)) as (_, agent_port), \
                served(admin, admin_limits, admin_port_refusals(app)) as (_, admin_port), \
                aiohttp.ClientSession() as session:
            yield World(door, Served(app, f"http://127.0.0.1:{agent_port.port}", session),
                        Served(admin, f"http://127.0.0.1:{admin_port.port}", session),
                        dev_key, clock, recorder, agent_token)
            recorder.release.set()


@pytest.mark.parametrize("door", ENTRANCES, ids=lambda door: door.name)
@pytest.mark.parametrize("code", sorted(ReasonCode))
async def test_the_walk(world: World, code: ReasonCode, door: Door) -> None:
    status, run, settings = SCENARIOS[code]
    outcome = await run(world)
    assert outcome.status == status, outcome
    assert code in {outcome.code, *outcome.reasons}, outcome
    if settings["aggregated"]:  # no record each: one aggregate per window
        world.rt.refusals.flush()
        [aggregate] = [r for r in _records(world.rt) if r["kind"] == "admin_refusals"]
        assert aggregate["rate_limited"] >= 1
        assert {c["code"] for c in aggregate["counts"]} == {"unauthenticated"}
        return
    records = _records(world.rt)
    if settings["unrecorded"]:  # refused before there was a request: counted, not recorded
        assert outcome.request_id
        assert [r for r in records if outcome.request_id in (r.get("decision_id"),
                                                             r.get("request_id"))] == []
        return
    if settings["sink_down"]:  # the log itself failed: no record of the call, nothing sent
        assert outcome.request_id
        assert [r for r in records if r.get("decision_id") == outcome.request_id] == []
        assert world.recorder.seen == []
        return
    if outcome.request_id in world.decision_ids:
        decisions = [r for r in records if r["kind"] == "decision"
                     and r["decision_id"] == outcome.request_id]
        assert len(decisions) == 1, decisions
        # A refusal is decided with its code; an answer that failed later (upstream errors,
        # a held call's fate) was decided as forwarded or held, and says so.
        decided = decisions[0]
        assert decided["code"] is None or str(code) in {decided["code"], *decided["reasons"]}
    else:
        refused = [r for r in records if r.get("event") == "refused"]
        assert [r["code"] for r in refused] == [str(code)], refused
