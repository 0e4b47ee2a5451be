"""`toolgate serve --workers 2`, as an operator runs it: two processes on one agent port
(SO_REUSEPORT) and one SQLite store act as one gateway — every call recorded once, one
execution per idempotency key, one budget, one reload — each worker writing its own audit
chain, which `toolgate audit verify` finds from the config. The supervisor stops them
cleanly, stops them all when one dies, and leaves no worker behind when it is killed.

Which worker answers a connection is the kernel's choice (a hash of the connection's
addresses): the tests send many calls, each on a new connection, and check in the audit
files that both workers answered some."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, toolgate_command
from tests.e2e.profiles import HERE as E2E
from tests.e2e.profiles import SHIPPED_POLICIES, state_gateway

pytestmark = pytest.mark.one_engine   # about processes and files, not the policy engine

WORKERS = ("--workers", "2")
REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
          "reason": "damaged", "amount": 150}


def chain_files(gw: Gateway) -> dict[int, Path]:
    """Each worker's live audit file: worker 1's is the configured one."""
    return {1: gw.audit_file, 2: gw.audit_file.with_name("toolgate.w2.jsonl")}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()] \
        if path.exists() else []


def answered_by(gw: Gateway, replies: list[Reply]) -> dict[int, int]:
    """How many of these calls each worker recorded a decision for."""
    ids = {r.request_id for r in replies}
    return {worker: sum(1 for r in records(path)
                        if r["kind"] == "decision" and r["decision_id"] in ids)
            for worker, path in chain_files(gw).items()}


def logged(gw: Gateway) -> list[dict[str, Any]]:
    """The gateway's log lines (JSON on stderr: `gateway.logs`), not its audit records."""
    return [json.loads(line) for line in gw.log().splitlines()
            if line.startswith('{"timestamp":')]


def workers_gateway(directory: Path, dev_key: DevKey, upstream: Upstream,
                    policies: Path | None = None) -> Gateway:
    gw = state_gateway(directory, dev_key, upstream)
    gw.tool_specs = [*gw.tool_specs, E2E / "specs"]
    if policies is not None:
        gw.policies = [policies, *gw.policies[1:]]
    gw.serve_args = WORKERS
    # The supervisor's run directory for metrics (`mkdtemp`) goes under the gateway's.
    gw.environ = {**gw.environ, "TMPDIR": str(directory)}
    return gw


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped policies, for the reload tests to edit."""
    copy = tmp_path_factory.mktemp("workers-policies") / "policies"
    shutil.copytree(SHIPPED_POLICIES, copy)
    return copy


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
       policies: Path) -> Iterator[Gateway]:
    gateway = workers_gateway(tmp_path_factory.mktemp("workers"), dev_key, upstream,
                              policies)
    # Records on stdout too: the supervisor relays each worker's, whole lines only.
    gateway.extra = {**gateway.extra, "audit": {"file": "audit/toolgate.jsonl",
                                                "stdout": True}}
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_both_workers_answer_and_each_call_is_recorded_once(gw: Gateway,
                                                            token: str) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda i: gw.call("GET", f"/echo/items/n{i}", token=token),
                                range(60)))
    assert {r.status for r in replies} == {200}
    counts = answered_by(gw, replies)
    assert counts[1] > 0 and counts[2] > 0, counts
    assert counts[1] + counts[2] == 60, "one decision record per call, in one chain"
    listening = {r.get("worker"): r["message"] for r in logged(gw)
                 if r["message"].startswith("toolgate listening on ")}
    assert "(admin http" in listening[1]
    assert "(admin port on worker 1)" in listening[2]


def test_one_key_sent_to_both_workers_at_once_is_forwarded_once(
        gw: Gateway, upstream: Upstream, token: str) -> None:
    """Sixty requests with one key, at once: the first to claim it is held at the upstream
    until every other has been answered (409, in flight), whichever worker it reached."""
    key, calls = "workers-one-key", 60
    gate = upstream.gate("workers-one-key")

    def send(_: int) -> Reply:
        return gw.call("POST", "/state/slow", token=token, body={"n": 1}, timeout=30,
                       headers={"Idempotency-Key": key, "X-Gate": "workers-one-key"})

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(send, i) for i in range(calls)]
        refused = []
        for future in as_completed(futures):
            refused.append(future.result())
            if len(refused) == calls - 1:
                break
        gate.wait_arrived()
        gate.open()
        replies = [f.result() for f in futures]
    assert len([s for s in upstream.seen if s.headers.get("Idempotency-Key") == key]) == 1
    assert sorted((r.status, r.code) for r in replies) == \
        [(200, None)] + [(409, "idempotency_in_flight")] * (calls - 1)
    counts = answered_by(gw, replies)
    assert counts[1] > 0 and counts[2] > 0, counts
    replay = gw.call("POST", "/state/slow", token=token, body={"n": 1},
                     headers={"Idempotency-Key": key})
    assert replay.status == 200 and replay.headers["Idempotent-Replayed"] == "true"


def test_a_run_budget_is_not_overspent_across_workers(gw: Gateway, upstream: Upstream,
                                                      dev_key: DevKey) -> None:
    run = "workers-run-spend"
    # Tenant initech: no cap on the number of calls, so only the spend cap (100) binds.
    token = dev_key.token("initech-agent", tenant="initech", scopes=["echo:write"])

    def send(_: int) -> Reply:
        return gw.call("POST", "/state/spend", token=token, body={"amount": 7},
                       headers={"X-Agent-Run-Id": run}, timeout=30)

    with ThreadPoolExecutor(max_workers=30) as pool:
        replies = list(pool.map(send, range(60)))
    mine = {r.request_id for r in replies}
    forwarded = [s for s in upstream.seen if s.headers.get("X-Request-Id") in mine]
    assert sum(json.loads(s.body)["amount"] for s in forwarded) == 98   # 14 x 7
    assert sorted(r.status for r in replies) == [200] * 14 + [429] * 46
    counts = answered_by(gw, replies)
    assert counts[1] > 0 and counts[2] > 0, counts


def test_metrics_add_up_every_worker(gw: Gateway, token: str) -> None:
    """`/metrics` is worker 1's; it sums the values every worker keeps in the run's
    multiprocess directory."""
    replies = [gw.call("POST", "/state/items", token=token, body={"name": f"m{i}"},
                       headers={"Idempotency-Key": f"workers-metrics-{i}"})
               for i in range(30)]
    assert {r.status for r in replies} == {200}
    counts = answered_by(gw, replies)
    assert counts[1] > 0 and counts[2] > 0, counts
    text = admin(gw, "GET", "/metrics", None).raw.decode()
    found = re.findall(r'^toolgate_calls_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M)
    keyed = [float(value) for labels, value in found
             if 'tool="keyed_post"' in labels and 'action="allow"' in labels]
    assert sum(keyed) == 30


def test_a_held_call_is_executed_once_whichever_worker_held_it(
        gw: Gateway, upstream: Upstream, token: str, dev_key: DevKey) -> None:
    """Calls held by either worker, approved on worker 1's admin port while every worker's
    sweeper looks for approved calls to send: each is sent once, and either worker answers
    its poll. (24 calls: the kernel spreads connections at random, and all on one worker
    would fail the test once in 2**23 runs.)"""
    held = [gw.call("POST", "/billing/refunds", token=token, body={**REFUND, "amount": 500},
                    headers={"Idempotency-Key": f"workers-held-{i}"}) for i in range(24)]
    assert {r.status for r in held} == {202}
    counts = answered_by(gw, held)
    assert counts[1] > 0 and counts[2] > 0, counts
    alice = approver(dev_key, "alice", "billing-approver")
    for reply in held:
        done = admin(gw, "POST", f"/v1/approvals/{reply.json['approval_id']}/approve", alice)
        assert done.json["status"] == "executed"
    ids = {r.request_id for r in held}
    sent = [s for s in upstream.seen if s.headers.get("X-Request-Id") in ids]
    assert len(sent) == len(held)
    polls = [gw.call("GET", reply.json["poll"], token=token) for reply in held * 3]
    assert {p.json["status"] for p in polls} == {"executed"}


def _stricter(policies: Path, limit: int) -> None:
    data = policies / "data.yaml"
    data.write_text(re.sub(r"max: \{USD: \d+,", f"max: {{USD: {limit},", data.read_text()))


def _reloads(gw: Gateway) -> dict[int, list[str]]:
    return {worker: [r["trigger"] for r in records(path) if r["kind"] == "policy_reload"]
            for worker, path in chain_files(gw).items()}


def _refunds(gw: Gateway, token: str, prefix: str) -> tuple[set[str], dict[int, int]]:
    replies = [gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                       headers={"Idempotency-Key": f"{prefix}-{i}"}) for i in range(30)]
    return {str(r.headers["X-Toolgate-Decision"]) for r in replies}, answered_by(gw, replies)


def test_a_reload_by_the_admin_api_or_sighup_reaches_every_worker(
        gw: Gateway, policies: Path, token: str, dev_key: DevKey) -> None:
    before = _reloads(gw)
    assert _refunds(gw, token, "workers-before")[0] == {"allow"}   # 150 USD, limit 200
    _stricter(policies, 100)
    ops = approver(dev_key, "ops-oncall", "sre")
    answer = admin(gw, "POST", "/v1/policy/reload", ops)
    assert answer.json["status"] == "reloaded"
    # Worker 1 reloaded before answering; worker 2 when the supervisor passed it on.
    assert _reloads(gw)[1] == [*before[1], "api"]
    wait_for(lambda: _reloads(gw)[2] == [*before[2], "worker"], what="worker 2's reload")
    decisions, counts = _refunds(gw, token, "workers-stricter")
    assert decisions == {"require_approval"}
    assert counts[1] > 0 and counts[2] > 0, counts

    _stricter(policies, 200)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)   # to the supervisor, which passes it on
    wait_for(lambda: all(triggers[-1:] == ["sighup"] for triggers in _reloads(gw).values()),
             what="every worker's SIGHUP reload")
    decisions, counts = _refunds(gw, token, "workers-looser")
    assert decisions == {"allow"}
    assert counts[1] > 0 and counts[2] > 0, counts


def verify(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    return subprocess.run([*toolgate_command(), "audit", "verify", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_sigterm_stops_every_worker_cleanly_and_verify_finds_both_chains(
        gw: Gateway) -> None:
    """Last in the module: it stops the module's gateway."""
    pids = {w: records(path)[0]["pid"] for w, path in chain_files(gw).items()}
    assert list(gw.directory.glob("toolgate-metrics-*")), "the run's metrics directory"
    assert gw.stop() == 0
    assert not list(gw.directory.glob("toolgate-metrics-*")), "removed at the end"
    for worker, path in chain_files(gw).items():
        last = records(path)[-1]
        assert (last["kind"], last["event"]) == ("audit", "closed"), worker
        with pytest.raises(ProcessLookupError):
            os.kill(pids[worker], 0)
    on_stdout = [json.loads(line) for line in gw.log().splitlines()
                 if line.startswith('{"ts":')]
    in_files = [r for path in chain_files(gw).values() for r in records(path)]
    assert sorted(r["hash"] for r in on_stdout) == sorted(r["hash"] for r in in_files)
    done = verify(gw.directory / "toolgate.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"toolgate\.jsonl: ok: \d+ records in 1 files, seq 1\.\.\d+, head "
                        r"[0-9a-f]{64}\ntoolgate\.w2\.jsonl: ok: \d+ records in 1 files, "
                        r"seq 1\.\.\d+, head [0-9a-f]{64}\n", done.stdout), done.stdout


def test_a_dead_worker_stops_the_gateway_and_each_chain_resumes_with_any_n(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream, token: str) -> None:
    """SIGKILL worker 2: the supervisor stops worker 1 cleanly and exits 1 (fail closed).
    Started again with two workers, each resumes its own chain; then with one, worker 2's
    chain is still found and verified from the config."""
    gw = workers_gateway(tmp_path / "gw", dev_key, upstream)
    files = chain_files(gw)
    gw.start()
    assert gw.proc is not None
    os.kill(records(files[2])[0]["pid"], signal.SIGKILL)
    assert gw.proc.wait(30) == 1
    assert (records(files[1])[-1]["kind"], records(files[1])[-1]["event"]) == \
        ("audit", "closed")
    assert any(r["level"] == "error" and r.get("process") == "supervisor"
               and re.fullmatch(r"worker 2 \(pid \d+\) exited -9 unasked; stopping the others",
                                r["message"]) for r in logged(gw))
    seqs = {w: records(path)[-1]["seq"] for w, path in files.items()}

    gw.start()
    for worker, path in files.items():
        opened = next(r for r in records(path) if r["kind"] == "audit"
                      and r["event"] == "opened" and r["seq"] > seqs[worker])
        assert opened["resumed"] == {"file": path.name, "seq": seqs[worker]}
        assert opened["previous_stop"] == ("clean" if worker == 1 else "unclean")
    assert gw.stop() == 0

    gw.serve_args = ()                 # one process: worker 1's chain, as before
    gw.start()
    assert gw.call("GET", "/echo/items/single", token=token).status == 200
    assert gw.stop() == 0
    done = verify(gw.directory / "toolgate.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok: ") == 2
    assert "warning: " in done.stdout   # worker 2's unclean stop, said at its restart


def test_no_worker_outlives_a_killed_supervisor(tmp_path: Path, dev_key: DevKey,
                                                upstream: Upstream) -> None:
    """SIGKILL to the supervisor: the kernel sends each worker SIGTERM, and each stops as
    a gateway does, its chain ending with `closed`."""
    gw = workers_gateway(tmp_path / "gw", dev_key, upstream)
    gw.start()
    pids = {w: records(path)[0]["pid"] for w, path in chain_files(gw).items()}
    gw.kill()

    def gone() -> bool:
        for pid in pids.values():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    wait_for(gone, timeout=30, what="the workers to stop")
    for path in chain_files(gw).values():
        assert (records(path)[-1]["kind"], records(path)[-1]["event"]) == ("audit", "closed")


def _serve_error(config: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env["UPSTREAM_TOKEN"] = "x"
    done = subprocess.run([*toolgate_command(), "serve", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    return done.returncode, done.stderr


def test_a_bad_config_fails_as_one_gateway_would_before_any_worker_starts(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> None:
    gw = workers_gateway(tmp_path / "gw", dev_key, upstream)
    gw.directory.mkdir(parents=True)
    config = gw.config()
    config["auth"]["jwks_file"] = "keys/missing.json"
    path = gw.directory / "toolgate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    one = _serve_error(path)
    two = _serve_error(path, *WORKERS)
    assert one[0] == two[0] == 1
    assert two[1] == one[1].splitlines()[-1] + "\n"
    assert two[1].startswith("error: ") and "missing.json" in two[1]
    assert not (gw.directory / "audit").exists(), "no worker started"

    assert _serve_error(path, "--workers", "65") == (
        1, "error: --workers: '65' is not a number of workers from 1 to 64\n")
    config["audit"] = {"file": None, "stdout": True}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, err = _serve_error(path, *WORKERS)
    assert code == 1 and err.startswith("error: ") and "audit.file" in err
    assert err.count("\n") == 1
