"""Chaos, short enough for CI: an upstream that hangs, resets, answers garbage or half an
answer; a gateway SIGKILLed under load. Each time: fail closed with the right error, no
forwarded call without its decision record, no approval lost or executed twice, and
recovery without a restart where the fault healed. (PostgreSQL stopped under load:
tests/e2e/test_store_outage.py. Faults of the audit sink belong to the audit log's tests.)"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import FaultyUpstream, Gateway, Reply, Upstream, running
from tests.e2e.profiles import chaos_gateway


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    server = FaultyUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
       faulty: FaultyUpstream) -> Iterator[Gateway]:
    with running(chaos_gateway(tmp_path_factory.mktemp("chaos"), dev_key, upstream,
                               faulty.url)) as gateway:
        yield gateway


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("hang", 504, "upstream_timeout"), ("reset", 502, "upstream_error"),
    ("garbage", 502, "upstream_error"), ("half", 502, "upstream_error")])
def test_a_misbehaving_upstream_fails_closed_and_recovers(
        gw: Gateway, faulty: FaultyUpstream, token: str, fault: str, status: int,
        code: str) -> None:
    before = faulty.requests
    reply = gw.call("GET", f"/chaos/{fault}", token=token)
    assert (reply.status, reply.code) == (status, code)
    # It may have run: never resent (a GET too), never counted as unsent.
    assert faulty.requests == before + 1
    records = gw.records_for(reply.request_id)
    assert [r["kind"] for r in records] == ["decision", "outcome"]
    assert records[1]["error"] == code
    # The fault healed (the next request is answered): so is the gateway, no restart.
    assert gw.call("GET", "/chaos/ok", token=token).status == 200


def test_sigkill_under_load_loses_no_record_and_runs_nothing_twice(
        tmp_path: Path, dev_key: DevKey, token: str, faulty: FaultyUpstream) -> None:
    own = Upstream()  # this test's alone: everything it sees came from this gateway
    own.start()
    gw = chaos_gateway(tmp_path / "gw", dev_key, own, faulty.url)
    gw.start()
    replies: list[Reply | OSError | http.client.HTTPException] = []

    def load(i: int) -> None:
        try:
            if i % 3 == 0:  # held for approval (the policy holds every slow_refund)
                replies.append(gw.call("POST", "/echo/slow-refunds", token=token,
                                       body={"tenant_id": "acme", "amount": i},
                                       headers={"Idempotency-Key": f"kill-{i}",
                                                "X-Delay": "0"}, timeout=5))
            else:
                replies.append(gw.call("POST", "/echo/items", token=token,
                                       body={"name": f"n{i}", "count": i}, timeout=5))
        except (OSError, http.client.HTTPException) as exc:  # the gateway died under it
            replies.append(exc)

    try:
        threads = [threading.Thread(target=load, args=(i,)) for i in range(60)]
        for t in threads[:30]:
            t.start()
        wait_for(lambda: len(replies) >= 10, what="load to be under way")
        gw.kill()
        for t in threads[30:]:
            t.start()
        for t in threads:
            t.join()
        gw.start()
        decided = {r["decision_id"] for r in gw.records() if r["kind"] == "decision"}
        # No call reached the upstream without its decision record, killed or not.
        sent = [s.headers.get("X-Request-Id") for s in own.seen]
        assert sent and set(sent) <= decided
        # Every held call survived; approved now, each runs exactly once.
        alice = approver(dev_key, "alice", "billing-approver")
        listed: Any = admin(gw, "GET", "/v1/approvals?status=pending&limit=500", alice).json
        held = listed["approvals"]
        assert held, "the held calls survived the kill"
        for approval in held:
            admin(gw, "POST", f"/v1/approvals/{approval['id']}/approve", alice)
        for approval in held:
            wait_for(lambda a=approval: admin(gw, "GET", f"/v1/approvals/{a['id']}",
                                              alice).json["status"] == "executed",
                     what="execution")
            runs = [s for s in own.seen
                    if s.headers.get("X-Request-Id") == approval["decision_id"]]
            assert len(runs) == 1, approval["id"]
    finally:
        gw.stop()
        own.stop()
