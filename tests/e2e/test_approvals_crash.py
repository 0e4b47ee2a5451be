"""SIGKILL the gateway in each approval state and restart it on the same state directory:
nothing is lost, and nothing is executed twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approval_status, approver, wait_for
from tests.e2e.harness import Gateway, Upstream
from tests.e2e.profiles import approvals_gateway

SLOW = {"tenant_id": "acme", "amount": 10}


@pytest.fixture
def gw(tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> Iterator[Gateway]:
    # wait_ms 0: approve answers at once, so the gateway can be killed mid-send. A killed
    # instance's calls are taken over after one second of silence (ten sweeps).
    gateway = approvals_gateway(tmp_path / "gw", dev_key, upstream, wait_ms=0,
                                takeover_after_ms=1000)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def alice(dev_key: DevKey) -> str:
    return approver(dev_key, "alice", "billing-approver", "finance")


def sent(upstream: Upstream, key: str) -> list[Any]:
    return [s for s in upstream.seen if s.headers.get("Idempotency-Key") == key]


def restart(gw: Gateway) -> None:
    gw.kill()
    gw.start()


def test_killed_while_pending(gw: Gateway, upstream: Upstream, token: str,
                              alice: str) -> None:
    held = gw.call("POST", "/billing/refunds", token=token, headers={"Idempotency-Key": "k-p"},
                   body={"tenant_id": "acme", "order_id": "ord_1234", "amount": 250,
                         "currency": "USD"})
    approval_id = held.json["approval_id"]
    restart(gw)
    assert approval_status(gw, approval_id, alice) == "pending"
    admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", alice)
    wait_for(lambda: approval_status(gw, approval_id, alice) == "executed", what="execution")
    assert len(sent(upstream, "k-p")) == 1


def test_killed_while_approved(gw: Gateway, upstream: Upstream, token: str,
                               alice: str) -> None:
    """The durable state right after the approval committed and before the executor claimed
    it (the window is microseconds wide, so the state is written as the crash leaves it)."""
    held = gw.call("POST", "/echo/slow-refunds", token=token, body=SLOW,
                   headers={"Idempotency-Key": "k-a", "X-Delay": "0"})
    approval_id = held.json["approval_id"]
    gw.kill()
    with sqlite3.connect(gw.directory / "state" / "toolgate.db") as db:
        db.execute("UPDATE approvals SET status = 'approved' WHERE id = ?", (approval_id,))
    gw.start()
    wait_for(lambda: approval_status(gw, approval_id, alice) == "executed", what="recovery")
    assert len(sent(upstream, "k-a")) == 1


def test_killed_while_executing_an_idempotent_call(gw: Gateway, upstream: Upstream,
                                                   token: str, alice: str) -> None:
    gate = upstream.gate("k-e")  # the upstream holds the call until the gateway is killed
    held = gw.call("POST", "/echo/slow-refunds", token=token, body=SLOW,
                   headers={"Idempotency-Key": "k-e", "X-Gate": "k-e"})
    approval_id = held.json["approval_id"]
    assert admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", alice).status == 200
    gate.wait_arrived()
    assert approval_status(gw, approval_id, alice) == "executing"
    restart(gw)
    gate.open()
    # The killed instance's heartbeat must go stale before its call is taken over.
    wait_for(lambda: approval_status(gw, approval_id, alice) == "executed", timeout=40,
             what="resend")
    # Sent again with the same key, which the upstream dedups on: one execution.
    attempts = sent(upstream, "k-e")
    assert len(attempts) == 2
    assert {a.body for a in attempts} == {attempts[0].body}
    events = [r.get("event") for r in gw.records() if r.get("approval_id") == approval_id]
    assert "resending" in events


def test_killed_while_executing_a_call_without_a_key(gw: Gateway, upstream: Upstream,
                                                     token: str, alice: str) -> None:
    gate = upstream.gate("notes")
    held = gw.call("POST", "/echo/slow-notes", token=token, body=SLOW,
                   headers={"X-Gate": "notes"})
    approval_id = held.json["approval_id"]
    assert admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", alice).status == 200

    def notes() -> list[Any]:
        return [s for s in upstream.seen if s.raw_path == "/v1/slow/notes"
                and s.headers.get("X-Request-Id") == held.request_id]

    gate.wait_arrived()
    restart(gw)
    gate.open()
    wait_for(lambda: approval_status(gw, approval_id, alice) == "outcome_unknown",
             timeout=40, what="outcome_unknown")
    assert len(notes()) == 1, "never a silent second execution"
    polled = gw.call("GET", held.json["poll"], token=token).json
    assert polled["status"] == "outcome_unknown"
    assert "resolve it by hand" in polled["reason"]
