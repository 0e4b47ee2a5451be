"""SIGTERM drains `toolgate serve`, as a pod being rolled is drained: `/readyz` turns 503
`draining` at once; the agent port accepts for `shutdown.delay_ms`, then refuses; calls in
flight — held at a slow upstream, or an approved call the approver's request waits for —
finish within `shutdown.drain_ms` and are answered with `Connection: close`; what is still
in flight after the window is cancelled and recorded so; the audit log ends `closed` and
the process exits 0. The same with `--workers 2`, whose supervisor passes the signal on.

Every wait is on an event (the upstream's gate, a record, the process's exit) or a polled
condition with a generous deadline; no test asserts how long anything took."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, request
from tests.e2e.profiles import state_gateway

pytestmark = pytest.mark.one_engine   # about processes and signals, not the policy engine

WORKERS = ("--workers", "2")
MODES = [pytest.param((), id="one-process"), pytest.param(WORKERS, id="workers-2")]
LONG_MS = 120_000   # a window that must not end during a test


def calls_in_flight(mode: tuple[str, ...]) -> int:
    """With two workers, calls on new connections land on either at the kernel's choice:
    16 held calls leave one worker with none once in 2**15 runs."""
    return 16 if mode else 1


def drain_gateway(directory: Path, dev_key: DevKey, upstream: Upstream,
                  mode: tuple[str, ...], **shutdown: int) -> Gateway:
    gw = state_gateway(directory, dev_key, upstream, shutdown=shutdown,
                       approvals={"sweep_interval_ms": 100, "wait_ms": LONG_MS})
    gw.serve_args = mode
    # The supervisor's run directory for metrics (`mkdtemp`) goes under the gateway's.
    gw.environ = {**gw.environ, "TMPDIR": str(directory)}
    return gw


@pytest.fixture
def stopped() -> Iterator[list[Gateway]]:
    """Gateways a test started: stopped (SIGTERM) at its end if it did not stop them."""
    started: list[Gateway] = []
    yield started
    for gw in started:
        gw.stop()


def chains(gw: Gateway) -> list[Path]:
    """Each process's audit chain: worker 1's is the configured file."""
    second = gw.audit_file.with_name("toolgate.w2.jsonl")
    return [gw.audit_file, *([second] if second.exists() else [])]


def records(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(line) for path in chains(gw) for line in path.read_bytes().splitlines()]


def ends_closed(gw: Gateway) -> bool:
    lasts = [json.loads(path.read_bytes().splitlines()[-1]) for path in chains(gw)]
    return all((r["kind"], r["event"]) == ("audit", "closed") for r in lasts)


def readyz(gw: Gateway) -> Reply | None:
    try:
        return request(gw.admin_port, "GET", "/readyz", timeout=5)
    except OSError:
        return None


def draining(gw: Gateway) -> bool:
    reply = readyz(gw)
    return reply is not None and reply.status == 503 and reply.json == {"status": "draining"}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def hold(gw: Gateway, upstream: Upstream, pool: ThreadPoolExecutor, token: str, gate: str,
         count: int) -> list[Future[Reply]]:
    """`count` calls held at the upstream behind `gate`, each on its own connection."""
    calls = [pool.submit(gw.call, "POST", "/state/slow", token=token, body={"n": i},
                         headers={"Idempotency-Key": f"{gate}-{i}", "X-Gate": gate},
                         timeout=90) for i in range(count)]
    wait_for(lambda: sum(s.headers.get("X-Gate") == gate for s in upstream.seen) == count,
             what="every call to reach the upstream")
    return calls


def held_ids(upstream: Upstream, gate: str) -> set[str]:
    return {str(s.headers["X-Request-Id"]) for s in upstream.seen
            if s.headers.get("X-Gate") == gate}


def scrape(gw: Gateway, mode: tuple[str, ...]) -> None:
    """`/metrics` has the build and process series: per worker with `--workers`."""
    text = request(gw.admin_port, "GET", "/metrics").raw.decode()
    assert re.search(r'^toolgate_build_info\{aiohttp="[^"]+",python="3\.\d+\.\d+",'
                     r'uvloop="[^"]+",version="[^"]+"\} 1\.0$', text, re.M)
    assert re.search(r'^python_info\{.*\} 1\.0$', text, re.M)
    if not mode:
        assert re.search(r"^process_resident_memory_bytes [0-9.e+]+$", text, re.M)
        assert re.search(r'^python_gc_collections_total\{generation="0"\} ', text, re.M)
        return
    memory = re.findall(r'^process_resident_memory_bytes\{worker="([^"]+)"\} ', text, re.M)
    assert sorted(memory) == ["1", "2", "supervisor"]
    assert re.search(r'^process_cpu_seconds_total\{worker="2"\} ', text, re.M)
    assert re.search(r'^python_gc_collections_total\{generation="0",worker="1"\} ', text,
                     re.M)


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_lets_calls_in_flight_finish_then_exits_0(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str,
        mode: tuple[str, ...], stopped: list[Gateway]) -> None:
    gw = drain_gateway(tmp_path / "gw", dev_key, upstream, mode, drain_ms=LONG_MS)
    stopped.append(gw)
    gw.start()
    scrape(gw, mode)
    name = f"drain-finish-{tmp_path.name}"
    gate = upstream.gate(name)
    count = calls_in_flight(mode)
    with ThreadPoolExecutor(max_workers=count) as pool:
        calls = hold(gw, upstream, pool, token, name, count)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: draining(gw), what="/readyz to answer draining")
        wait_for(lambda: refused(gw.port), what="the agent port to refuse new connections")
        assert not any(call.done() for call in calls), "still in flight, still served"
        assert gw.proc.poll() is None
        gate.open()
        replies = [call.result() for call in calls]
    assert {r.status for r in replies} == {200}
    assert {r.headers["Connection"] for r in replies} == {"close"}
    assert gw.proc.wait(60) == 0
    outcomes = {r["decision_id"]: r for r in records(gw) if r["kind"] == "outcome"}
    assert {r.request_id for r in replies} == held_ids(upstream, name)
    assert all(outcomes[r.request_id]["upstream_status"] == 200 for r in replies)
    assert ends_closed(gw)


@pytest.mark.parametrize("mode", MODES)
def test_a_call_still_in_flight_after_the_window_is_cancelled_and_recorded(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str,
        mode: tuple[str, ...], stopped: list[Gateway]) -> None:
    gw = drain_gateway(tmp_path / "gw", dev_key, upstream, mode, drain_ms=100)
    stopped.append(gw)
    gw.start()
    name = f"drain-cut-{tmp_path.name}"
    gate = upstream.gate(name)
    count = calls_in_flight(mode)
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            calls = hold(gw, upstream, pool, token, name, count)
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(60) == 0, "it exits with the upstream still holding the calls"
            for call in calls:
                assert isinstance(call.exception(), OSError), "cut without an answer"
    finally:
        gate.open()
    ids = held_ids(upstream, name)
    assert len(ids) == count
    mine = [r for r in records(gw) if r["decision_id"] in ids]
    assert sorted(r["kind"] for r in mine) == ["decision"] * count + ["outcome"] * count
    assert {r["error"] for r in mine if r["kind"] == "outcome"} == {"cancelled"}
    assert ends_closed(gw)


@pytest.mark.parametrize("mode", MODES)
def test_the_agent_port_accepts_during_the_delay_and_a_second_ctrl_c_cuts_it_short(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str,
        mode: tuple[str, ...], stopped: list[Gateway]) -> None:
    gw = drain_gateway(tmp_path / "gw", dev_key, upstream, mode, delay_ms=LONG_MS,
                       drain_ms=LONG_MS)
    stopped.append(gw)
    gw.start()
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGINT)
    wait_for(lambda: draining(gw), what="/readyz to answer draining")
    reply = gw.call("POST", "/state/items", token=token, body={"name": "in the delay"},
                    headers={"Idempotency-Key": f"drain-delay-{tmp_path.name}"})
    assert (reply.status, reply.headers["Connection"]) == (200, "close")
    gw.proc.send_signal(signal.SIGINT)   # Ctrl-C again: no waiting out the delay
    assert gw.proc.wait(60) == 0
    assert ends_closed(gw)


def test_an_approved_call_the_approver_waits_for_finishes_inside_the_window(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str,
        stopped: list[Gateway]) -> None:
    """The approver's request on the admin port waits (`approvals.wait_ms`) for the call it
    approved, which the upstream holds: the drain lets both finish."""
    gw = drain_gateway(tmp_path / "gw", dev_key, upstream, (), drain_ms=LONG_MS)
    stopped.append(gw)
    gw.start()
    name = f"drain-approved-{tmp_path.name}"
    gate = upstream.gate(name)
    held = gw.call("POST", "/echo/slow-notes", token=token,
                   body={"tenant_id": "acme", "amount": 3}, headers={"X-Gate": name})
    assert held.status == 202
    approval_id = held.json["approval_id"]
    alice = approver(dev_key, "alice", "billing-approver")
    with ThreadPoolExecutor(max_workers=1) as pool:
        approving = pool.submit(request, gw.admin_port, "POST",
                                f"/v1/approvals/{approval_id}/approve", token=alice,
                                timeout=90)
        gate.wait_arrived()
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: draining(gw), what="/readyz to answer draining")
        gate.open()
        approved = approving.result()
    assert (approved.status, approved.json["status"]) == (200, "executed")
    assert approved.headers["Connection"] == "close"
    assert gw.proc.wait(60) == 0
    [outcome] = [r for r in records(gw) if r["kind"] == "outcome"
                 and r.get("approval_id") == approval_id]
    assert (outcome["status"], outcome["upstream_status"]) == ("executed", 200)
    assert ends_closed(gw)
