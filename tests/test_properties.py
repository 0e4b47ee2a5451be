"""Properties, over random calls (hypothesis), through the real pipeline, engine and store:

- every call gets exactly one decision record;
- nothing reaches the upstream without an `allow` decision;
- the shipped policy: deny beats require_approval beats allow;
- a replay is byte for byte the answer that was stored;
- a held call, once approved, sends exactly what the approver was shown.

Each example runs a fresh gateway runtime on loopback (its own store and audit log), so the
examples are independent; the number of examples is bounded to keep the suite quick.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.act.handle import handle
from gateway.approvals.model import ApprovalStatus
from gateway.auth import principal_from_claims
from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, records, runtime, tool_call, upstream_server

KEY = DevKey.generate(kid="properties")
SCOPES = ["echo:read", "echo:write", "billing:refund", "payroll:write"]
TOKENS = {
    "agent": KEY.token("svc-agent", tenant="acme", scopes=SCOPES),
    "other-tenant": KEY.token("svc-globex", tenant="globex", scopes=SCOPES),
    "no-scopes": KEY.token("svc-reader", tenant="acme", scopes=[]),
}
FORGED = {"X-Forwarded-User": "admin", "X-Real-IP": "10.0.0.1", "X-Override": "true"}
EXAMPLES = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict[str, Any] | None
    token: str | None
    key: str | None
    forged: bool


# Mostly well-formed calls (so they reach the policy, the upstream and the queue), with
# the occasional bad argument, missing key, wrong tenant or forged header.
refunds = st.builds(
    lambda amount, tenant, currency, key, forged: Call(
        "POST", "/billing/refunds",
        {"tenant_id": tenant, "order_id": "ord_1234", "amount": amount, "currency": currency},
        "agent", key, forged),
    st.sampled_from([0.01, 120, 199, 200, 200.01, 250, 250, 5000, -5, "lots"]),
    st.sampled_from(["acme", "acme", "acme", "globex"]),
    st.sampled_from(["USD", "USD", "EUR", "XXX"]),
    st.sampled_from(["k1", "k2", "k3", "k4", None]), st.booleans())
echoes = st.builds(
    lambda name, count, token, key, forged: Call(
        "POST", "/echo/items", {"name": name, "count": count}, token, key, forged),
    st.sampled_from(["a", "a", "b", ""]), st.sampled_from([0, 1, 2, -1, "x"]),
    st.sampled_from(["agent", "agent", "agent", "other-tenant", "no-scopes", None]),
    st.sampled_from(["e1", "e2", None]), st.booleans())
payroll = st.just(Call("PUT", "/payroll/employees/emp_0042/bank-account",
                       {"tenant_id": "acme", "iban": "DE89370400440532013000"}, "agent",
                       "p1", False))
AGAIN = None  # in a list of calls: send the previous call again, exactly (a retry)
calls = st.lists(st.one_of(refunds, echoes, payroll, st.just(AGAIN)), min_size=1,
                 max_size=14)


async def send(rt: Runtime, call: Call, request_id: str) -> Any:
    headers: dict[str, str] = dict(FORGED) if call.forged else {}
    if call.key is not None:
        headers["Idempotency-Key"] = call.key
    bundle = rt.bundles.current
    tc = tool_call(bundle, call.method, call.path, body=call.body, request_id=request_id,
                   token=TOKENS[call.token] if call.token else None, headers=headers)
    return await handle(tc, bundle, rt)


async def run_calls(items: list[Call | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with upstream_server() as (recorder, url), \
                runtime(Path(tmp), KEY, url, FakeClock()) as rt:
            answers: dict[tuple[str, str], tuple[int, bytes]] = {}
            previous: Call | None = None
            for i, item in enumerate(items):
                call = item or previous
                if call is None:
                    continue
                previous = call
                request_id = f"req_{i}"
                reply = await send(rt, call, request_id)
                mine = [r for r in records(rt) if r["decision_id"] == request_id]
                decisions = [r for r in mine if r["kind"] == "decision"]
                assert len(decisions) == 1, mine
                forwarded = [s for s in recorder.seen
                             if s.headers.get("X-Request-Id") == request_id]
                if forwarded:
                    assert decisions[0]["action"] == "allow", decisions[0]
                    assert not set(FORGED) & {h.title() for h in forwarded[0].headers}
                # A replay is byte for byte what the key stored.
                if call.key is not None and reply.headers.get("Idempotent-Replayed"):
                    first = answers.get((call.path, call.key))
                    if first is not None:
                        assert (reply.status, reply.body) == first
                elif call.key is not None and forwarded:
                    answers[(call.path, call.key)] = (reply.status, reply.body)
            await approve_everything(rt, recorder)


async def approve_everything(rt: Runtime, recorder: Recorder) -> None:
    """Each held call, approved, sends exactly the plan its approver was shown."""
    approver = principal_from_claims({"sub": "alice", "tenant": "acme",
                                      "roles": ["billing-approver"],
                                      "scope": "toolgate:approve"})
    for held in await rt.store.list_approvals(status="pending"):
        shown = held.public(rt.upstreams.credential_header(held.plan.upstream))["call"]
        done = await rt.approvals.approve(held.id, approver, None)
        assert done.status is ApprovalStatus.EXECUTED
        [sent] = [s for s in recorder.seen
                  if s.headers.get("X-Request-Id") == held.decision_id]
        received = {k.lower(): v for k, v in sent.headers.items()
                    if k.lower() not in ("host", "content-length", "authorization")}
        assert received == {k.lower(): v for k, v in shown["headers"].items()}
        index = recorder.seen.index(sent)
        assert recorder.bodies[index].decode() == shown["body"]
        assert sent.raw_path == shown["path"]


@EXAMPLES
@given(calls)
def test_random_calls_keep_every_guarantee(items: list[Call | None]) -> None:
    asyncio.run(run_calls(items))


@dataclass(frozen=True)
class PolicyCase:
    tier: str
    tenant: str
    amount: Any
    currency: str


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.builds(PolicyCase, st.sampled_from(["green", "yellow", "red", "purple"]),
                 st.sampled_from(["acme", "globex", ""]),
                 st.one_of(st.sampled_from([0, 1, 199.99, 200, 200.01, 10**6]),
                           st.floats(-1e6, 1e6, allow_nan=False), st.just("lots")),
                 st.sampled_from(["USD", "EUR", "GBP", "XXX"])))
def test_the_shipped_policy_deny_beats_approval_beats_allow(case: PolicyCase) -> None:
    asyncio.run(_decide(case))


async def _decide(case: PolicyCase) -> None:
    from gateway.policy.embedded import EmbeddedEngine  # noqa: PLC0415
    from gateway.policy.sources import load_sources  # noqa: PLC0415
    from tests.support import ROOT  # noqa: PLC0415

    engine = EmbeddedEngine(load_sources([ROOT / "policies"]), "data.toolgate.decision", 5000)
    decision = await engine.evaluate({
        "tool": {"name": "create_refund_request", "tier": case.tier, "scopes": [],
                 "upstream": "billing", "mode": "enforce"},
        "args": {"tenant_id": case.tenant, "order_id": "ord_1", "amount": case.amount,
                 "currency": case.currency},
        "principal": {"sub": "s", "agent": None, "tenant": "acme", "scopes": [], "roles": [],
                      "claims": {}},
        "run": {"id": None, "tool_calls": 0, "calls_per_tool": {}, "spent": {}},
        "request": {"id": "r", "method": "POST", "path": "/billing/refunds",
                    "idempotency_key": None, "time": "2026-01-01T00:00:00Z",
                    "source_ip": "127.0.0.1", "entrance": "rest"}})
    denied = case.tier not in ("green", "yellow") or case.tenant != "acme"
    caps = {"USD": 200, "EUR": 180, "GBP": 160}
    within = (isinstance(case.amount, int | float) and case.currency in caps
              and case.amount <= caps[case.currency])
    expected = ("deny" if denied else "allow" if case.tier == "green" or within
                else "require_approval")
    assert decision.action == expected, (case, decision.reasons)
    assert orjson.dumps(list(decision.reasons))  # reasons are text, always
