"""PostgreSQL stopped mid-load: calls that need the store get 503 store_unavailable (fail
closed, audited), no call reaches the upstream without its decision record, and the
gateway recovers on its own when the database is back. Runs against a private server this
test starts and stops itself — never the machine's shared one."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin
from tests.e2e.harness import Reply, Upstream
from tests.e2e.postgres_support import PrivatePostgres, required_dsn
from tests.e2e.profiles import state_gateway


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    required_dsn()  # skipped, with how to enable it, like the other PostgreSQL tests
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.kill()
        server.remove()


def test_postgres_stopped_mid_load(private_postgres: PrivatePostgres, tmp_path: Path,
                                   dev_key: DevKey, upstream: Upstream,
                                   token: str) -> None:
    gw = state_gateway(tmp_path / "gw", dev_key, upstream,
                       store=private_postgres.dsn)
    gw.start()
    replies: list[Reply] = []
    stop = threading.Event()
    counter = itertools.count()

    def load() -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            n = next(counter)
            replies.append(gw.call("POST", "/state/items", token=token, body={"name": "x"},
                                   headers={"Idempotency-Key": f"outage-{n}"}, timeout=30))
            time.sleep(0.01)

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(1.0)
        assert any(r.status == 200 for r in replies), "load is running"
        private_postgres.stop_immediately()
        time.sleep(2.0)
        down = [r for r in replies if r.code == "store_unavailable"]
        assert down, "calls during the outage fail closed"
        assert all(r.status == 503 for r in down)
        ready = admin(gw, "GET", "/readyz", None)
        assert (ready.status, ready.json["status"]) == (503, "unready")
        # The driver's text (the server's address) is for the operator's log only.
        assert all(b"127.0.0.1" not in r.raw and b"Errno" not in r.raw
                   for r in [*down, ready])
        private_postgres.start()
        before = len(replies)

        def recovered() -> bool:
            return any(r.status == 200 for r in replies[before:])

        deadline = time.monotonic() + 30
        while not recovered() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert recovered(), "the gateway recovers without a restart"
    finally:
        stop.set()
        for w in workers:
            w.join(60)
        gw.stop()

    statuses = {r.status for r in replies}
    assert statuses <= {200, 503}, statuses
    records = gw.records()
    decided = {r["decision_id"] for r in records if r["kind"] == "decision"}
    assert len(decided) == len(replies), "one decision record per call"
    sent = [s for s in upstream.seen
            if str(s.headers.get("Idempotency-Key", "")).startswith("outage-")]
    assert sent
    assert all(s.headers["X-Request-Id"] in decided for s in sent), \
        "no call reached the upstream without its decision record"
    # The driver's error text (the server's address) is in no record; the agent's own
    # address is, as the policy saw it (`input.request.source_ip`).
    assert not [r for r in records if f"127.0.0.1:{private_postgres.port}" in json.dumps(r)
                or "Errno" in json.dumps(r)]
    assert "state store unavailable" in gw.log(), "the operator's log says what failed"
    assert all(r["stage"] in ("idempotency", "usage", "commit")
               for r in records if r["kind"] == "decision" and r["code"] ==
               "store_unavailable")
