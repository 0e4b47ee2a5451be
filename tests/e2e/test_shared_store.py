"""Two gateway processes on one PostgreSQL database act as one: one execution per key,
one spend cap, one kill switch. Skipped (with how to enable) without TEST_POSTGRES_DSN;
CI always sets it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream
from tests.e2e.postgres_support import fresh_database
from tests.e2e.profiles import state_gateway


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
         upstream: Upstream) -> Iterator[tuple[Gateway, Gateway]]:
    with fresh_database() as dsn:
        gateways = [state_gateway(tmp_path_factory.mktemp(f"replica{i}"), dev_key, upstream,
                                  store=dsn) for i in (1, 2)]
        for gw in gateways:
            gw.start()
        try:
            yield gateways[0], gateways[1]
        finally:
            for gw in gateways:
                gw.stop()


def test_one_key_across_replicas_runs_once(pair: tuple[Gateway, Gateway],
                                           upstream: Upstream, token: str) -> None:
    key = "shared-key-1"

    def send(i: int) -> Reply:
        gw = pair[i % 2]
        return gw.call("POST", "/state/slow", token=token, body={"n": 1}, timeout=60,
                       headers={"Idempotency-Key": key, "X-Delay": "1"})

    with ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(send, range(200)))
    assert len([s for s in upstream.seen if s.headers.get("Idempotency-Key") == key]) == 1
    fresh = [r for r in replies if r.status == 200 and "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    others = [r for r in replies if r is not fresh[0]]
    assert all(r.code == "idempotency_in_flight" or
               (r.status == 200 and r.headers["Idempotent-Replayed"] == "true")
               for r in others), {(r.status, r.code) for r in others}
    assert any(r.status == 409 for r in others)


def test_spend_cap_across_replicas(pair: tuple[Gateway, Gateway], upstream: Upstream,
                                   dev_key: DevKey) -> None:
    run = "run-shared-spend"
    # Tenant initech: no cap on the number of calls, so only the spend cap (100) binds.
    token = dev_key.token("initech-agent", tenant="initech", scopes=["echo:write"])

    def send(i: int) -> Reply:
        return pair[i % 2].call("POST", "/state/spend", token=token, body={"amount": 7},
                                headers={"X-Agent-Run-Id": run}, timeout=60)

    with ThreadPoolExecutor(max_workers=30) as pool:
        replies = list(pool.map(send, range(60)))
    mine = {r.request_id for r in replies}
    forwarded = [s for s in upstream.seen if s.headers.get("X-Request-Id") in mine]
    total = sum(json.loads(s.body)["amount"] for s in forwarded)
    assert total <= 100
    # Nothing under the cap was refused: 14 x 7 = 98, a 15th would be 105.
    assert len(forwarded) == 14
    assert sorted(r.status for r in replies) == [200] * 14 + [429] * 46


def test_kill_switch_set_on_one_replica_stops_the_other(
        pair: tuple[Gateway, Gateway], token: str, dev_key: DevKey) -> None:
    first, second = pair
    ops = approver(dev_key, "ops-oncall", "sre")
    assert second.call("POST", "/state/spend", token=token, body={"amount": 0}).status == 200
    assert admin(first, "POST", "/v1/killswitch", ops,
                 {"scope": "tool:spend_post", "reason": "incident 7"}).status == 200
    # Every replica reloads the switches each killswitch.poll_ms (at most a second, by the
    # config schema); the timing itself belongs to the benchmark, not to a pass/fail test.
    try:
        reply = wait_for(lambda: killed(second, token), what="the other replica to stop")
        assert (reply.status, reply.code) == (403, "killed")
    finally:
        assert admin(second, "DELETE", "/v1/killswitch/tool:spend_post", ops).status == 200
    wait_for(lambda: not killed(first, token), what="the first replica to revive")


def killed(gw: Gateway, token: str) -> Reply | None:
    reply = gw.call("POST", "/state/spend", token=token, body={"amount": 0})
    return reply if reply.code == "killed" else None


def test_one_queue_for_every_replica(pair: tuple[Gateway, Gateway], token: str,
                                     dev_key: DevKey) -> None:
    first, second = pair
    held = first.call("POST", "/billing/refunds", token=token, headers={
        "Idempotency-Key": "shared-held"}, body={"tenant_id": "acme", "order_id": "ord_1234",
                                                 "amount": 500, "currency": "USD"})
    assert held.status == 202
    approval_id = held.json["approval_id"]
    alice = approver(dev_key, "alice", "billing-approver")
    listed: Any = admin(second, "GET", "/v1/approvals?status=pending", alice).json
    assert approval_id in {a["id"] for a in listed["approvals"]}
    done = admin(second, "POST", f"/v1/approvals/{approval_id}/approve", alice)
    assert done.json["status"] == "executed"
    polled = first.call("GET", held.json["poll"], token=token)
    assert polled.json["status"] == "executed"


def _heartbeats(dsn: str) -> dict[str, float]:
    async def read() -> dict[str, float]:
        conn = await asyncpg.connect(dsn)
        try:
            return {r[0]: r[1] for r in await conn.fetch("SELECT id, seen_at FROM replicas")}
        finally:
            await conn.close()
    return asyncio.run(read())


def test_a_replica_starting_up_leaves_a_live_replicas_call_alone(
        pair: tuple[Gateway, Gateway], upstream: Upstream, token: str, dev_key: DevKey,
        tmp_path: Path) -> None:
    """A rolling update starts a replica while another is sending an approved call: the
    new one must neither send it again nor call its outcome unknown. The upstream holds the
    call until the new replica has swept a few times (seen in its heartbeats)."""
    first, _ = pair
    gate = upstream.gate("rolling")
    held = first.call("POST", "/echo/slow-notes", token=token, body={"tenant_id": "acme",
                                                                     "amount": 3},
                      headers={"X-Gate": "rolling"})
    assert held.status == 202
    approval_id = held.json["approval_id"]
    alice = approver(dev_key, "alice", "billing-approver")
    reply = admin(first, "POST", f"/v1/approvals/{approval_id}/approve", alice)
    assert reply.json["status"] == "executing"  # approve waits 2 s; the upstream holds it
    gate.wait_arrived()
    dsn = first.config()["store"]
    before = set(_heartbeats(dsn))
    third = state_gateway(tmp_path / "replica3", dev_key, upstream, store=dsn)
    third.start()
    try:
        [new] = wait_for(lambda: set(_heartbeats(dsn)) - before, what="a new replica")
        seen = _heartbeats(dsn)[new]
        # Each sweep heartbeats, then looks for abandoned calls: three more beats mean the
        # new replica has looked at this call at least twice.
        wait_for(lambda: _heartbeats(dsn)[new] >= seen + 0.25, what="three more sweeps")
        assert admin(first, "GET", f"/v1/approvals/{approval_id}",
                     alice).json["status"] == "executing"
        gate.open()
        wait_for(lambda: admin(first, "GET", f"/v1/approvals/{approval_id}",
                               alice).json["status"] != "executing", what="the result")
        assert admin(first, "GET", f"/v1/approvals/{approval_id}",
                     alice).json["status"] == "executed"
    finally:
        third.stop()
    sent = [s for s in upstream.seen if s.raw_path == "/v1/slow/notes"
            and s.headers.get("X-Request-Id") == held.request_id]
    assert len(sent) == 1
