"""The audit file cannot vanish from under a running gateway (DESIGN §7), end to end: a real
`toolgate serve`, real files, a recording upstream of this module's own.

The file deleted, renamed (logrotate's `mv`), replaced by a directory or by another file,
truncated or made immutable while calls are made: no call reaches the upstream, is queued
or is approved without its records in a file on disk; while nothing can be written the
gateway answers 503 `audit_unavailable`; once it can again it recovers by itself, and an
`audit` record says what happened before any new call's record; the chain's verification
names exactly the break the test made. Then: SIGKILL in the middle of a call and a restart
on the same files, rotation, the HMAC key, an edited last record, two writers of one file,
and the sinks' configuration.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from gateway.audit import chain
from gateway.audit.files import family
from gateway.devtokens import DevKey
from tests.e2e.approvals_support import admin, approval_status, approver
from tests.e2e.audit_support import (
    BREAKS,
    HELD_OPEN_SPEC,
    Break,
    files_on_disk,
    inflict,
    lines_of,
    read,
    refused_start,
    unrecorded,
)
from tests.e2e.harness import Gateway, Reply, Upstream, request, running
from tests.e2e.profiles import audit_gateway
from tests.e2e.test_cli import run

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 250, "currency": "USD"}
UNAVAILABLE = (503, "audit_unavailable")


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[Upstream]:
    """What this upstream saw, these tests' gateways sent: nothing else talks to it."""
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice(dev_key: DevKey) -> str:
    return approver(dev_key, "alice", "billing-approver")


def allow(gw: Gateway, token: str, item: str) -> Reply:
    return gw.call("GET", f"/echo/items/{item}", token=token)


def hold(gw: Gateway, token: str, key: str) -> Reply:
    return gw.call("POST", "/billing/refunds", token=token, body=REFUND,
                   headers={"Idempotency-Key": key})


def approve(gw: Gateway, alice: str, approval_id: str) -> Reply:
    return admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", alice)


@pytest.mark.parametrize("brk", BREAKS, ids=lambda brk: brk.name)
def test_the_audit_file_taken_from_under_calls(brk: Break, tmp_path: Path, dev_key: DevKey,
                                               own_upstream: Upstream, token: str,
                                               alice: str) -> None:
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream)
    live, seen_from = gw.audit_file, len(own_upstream.seen)
    with running(gw), contextlib.ExitStack() as undo:
        assert allow(gw, token, "before").status == 200
        first = hold(gw, token, "k-before").json["approval_id"]
        second = hold(gw, token, "k-pending").json["approval_id"]
        assert approve(gw, alice, first).status == 200
        before = lines_of(live)[-1]
        identity = live.stat()
        taken = inflict(brk, live, tmp_path / "aside", undo)
        sent = len(own_upstream.seen)
        during = [allow(gw, token, "during"), hold(gw, token, "k-during"),
                  approve(gw, alice, second)]
        if brk.refuses:
            assert [(r.status, r.code) for r in during] == [UNAVAILABLE] * 3
            ready = request(gw.admin_port, "GET", "/readyz")
            assert (ready.status, ready.json["status"]) == (503, "unready")
            assert brk.error is not None and brk.error in ready.json["audit"]
            assert len(own_upstream.seen) == sent, "nothing was sent"
            assert approval_status(gw, second, alice) == "pending", "nothing was approved"
            undo.close()   # the directory removed, the file writable again
            if brk.name == "unwritable":   # the readiness probe alone recovers it
                assert request(gw.admin_port, "GET", "/readyz").status == 200
                assert lines_of(live)[-1]["event"] == "recovered"
        else:
            assert [r.status for r in during] == [200, 202, 200]
        after = [allow(gw, token, "after"), hold(gw, token, "k-after")]
        assert [r.status for r in after] == [200, 202]
        if brk.refuses:
            assert approve(gw, alice, second).status == 200
        queue = admin(gw, "GET", "/v1/approvals?limit=500", alice).json["approvals"]
    assert gw.proc is not None and gw.proc.returncode == 0
    if brk.refuses:
        assert f"cannot be written ({brk.error}): calls are refused until it can" in gw.log()
        assert "k-during" not in {a["idempotency_key"] for a in queue}, "nothing was queued"

    on_disk = read(files_on_disk(live.parent, taken))
    assert unrecorded(own_upstream.seen[seen_from:], queue, on_disk) == []
    assert {a["status"] for a in queue} == {"executed", "pending"}

    # What happened is the chain's next record after the last one before the break:
    # before any record of a call made since.
    [said] = [r for r in lines_of(live) if r.get("event") == brk.event]
    assert said["seq"] == before["seq"] + 1 and said["prev_hash"] == before["hash"]
    assert (said.get("reason"), said.get("error")) == (brk.reason, brk.error)
    assert said["refused"] == (3 if brk.refuses else 0)   # three calls (a probe is no call)
    assert said["since"] <= said["ts"]
    if brk.event == "reopened":
        assert said["before"] == {"inode": identity.st_ino, "bytes": identity.st_size}
        assert said["after"] == {"inode": live.stat().st_ino, "bytes": 0}

    kept = [taken] if taken is not None else []
    whole = chain.verify([*kept, *family(live)], None)
    assert whole.ok, whole.problem
    alone = chain.verify(family(live), None)
    if brk.loses:   # the live file's first record says the records before it are missing
        assert alone.problem is not None
        assert (alone.problem.file, alone.problem.line) == (live, 1)
        assert f"records 1..{before['seq']} are missing" in alone.problem.message
    else:
        assert alone.ok, alone.problem


def test_killed_mid_call_then_restarted_on_the_same_files(
        tmp_path: Path, dev_key: DevKey, own_upstream: Upstream, token: str,
        alice: str) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "held_open.yaml").write_text(HELD_OPEN_SPEC, encoding="utf-8")
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream, tool_specs=(specs,),
                       wait_ms=0)
    seen_from = len(own_upstream.seen)
    forward, execute = own_upstream.gate("kill-forward"), own_upstream.gate("kill-execute")
    with running(gw), ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as gates:
        gates.callback(forward.open)   # at the end, whatever happened: let them answer
        gates.callback(execute.open)
        call = pool.submit(gw.call, "GET", "/echo/held-open", token=token,
                           headers={"X-Gate": "kill-forward"}, timeout=60)
        forward.wait_arrived()
        held = gw.call("POST", "/echo/slow-refunds", token=token,
                       body={"tenant_id": "acme", "amount": 10},
                       headers={"Idempotency-Key": "k-kill", "X-Gate": "kill-execute"})
        assert approve(gw, alice, held.json["approval_id"]).status == 200
        execute.wait_arrived()
        gw.kill()   # both calls are at the upstream, unanswered
        assert isinstance(call.exception(), OSError), "the agent's connection died with it"
    killed = lines_of(gw.audit_file)
    [forwarded] = [s.headers["X-Request-Id"] for s in own_upstream.seen[seen_from:]
                   if s.raw_path == "/v1/slow/held-open"]
    assert [r["kind"] for r in killed if r["decision_id"] == forwarded] == ["decision"]
    assert [r.get("event") or r["kind"] for r in killed
            if r["decision_id"] == held.request_id] == [
        "decision", "queued", "approval_vote", "approved", "executing"]
    assert unrecorded(own_upstream.seen[seen_from:], [], killed) == []

    with running(gw):   # on the same directory: the chain goes on from the last record
        opened = lines_of(gw.audit_file)[len(killed)]
        assert opened["event"] == "opened"
        assert opened["resumed"] == {"file": gw.audit_file.name, "seq": killed[-1]["seq"]}
        assert opened["prev_hash"] == killed[-1]["hash"]
        assert allow(gw, token, "restarted").status == 200
        queue = admin(gw, "GET", "/v1/approvals?limit=500", alice).json["approvals"]
    records = read(family(gw.audit_file))
    assert unrecorded(own_upstream.seen[seen_from:], queue, records) == []
    result = chain.verify(family(gw.audit_file), None)
    assert result.ok, result.problem
    assert (result.first_seq, result.last_seq) == (1, records[-1]["seq"])


def test_rotated_files_and_a_crash_keep_one_chain(tmp_path: Path, dev_key: DevKey,
                                                   own_upstream: Upstream, token: str) -> None:
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream, rotate_bytes=4096)
    with running(gw):
        assert {allow(gw, token, f"r{i}").status for i in range(12)} == {200}
        gw.kill()
        gw.start()
        assert {allow(gw, token, f"s{i}").status for i in range(12)} == {200}
    files = family(gw.audit_file)
    assert len(files) >= 4, files
    result = chain.verify(files, None)
    assert result.ok, result.problem
    assert (result.first_seq, result.records) == (1, sum(len(lines_of(f)) for f in files))
    for previous, current in itertools.pairwise(files):
        rotated = lines_of(current)[0]
        assert (rotated["event"], rotated["previous"]) == ("rotated", previous.name)
        assert rotated["previous_last_seq"] == lines_of(previous)[-1]["seq"]
    opened = [r for f in files for r in lines_of(f) if r.get("event") == "opened"]
    assert [r["resumed"] is None for r in opened] == [True, False]


def test_a_keyed_chain_verifies_with_its_key_only(tmp_path: Path, dev_key: DevKey,
                                                  own_upstream: Upstream, token: str) -> None:
    key, wrong = secrets.token_hex(32), secrets.token_hex(32)
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream, hmac_key_env="AUDIT_CHAIN_KEY")
    gw.environ = {"AUDIT_CHAIN_KEY": key}
    with running(gw):
        assert allow(gw, token, "keyed").status == 200
    files = family(gw.audit_file)
    assert chain.verify(files, key.encode()).ok
    for other in (wrong.encode(), None):
        result = chain.verify(files, other)
        assert result.problem is not None
        assert (result.problem.file, result.problem.line) == (gw.audit_file, 1)
        assert "the key is not the one it was sealed with" in result.problem.message
    gw.environ = {"AUDIT_CHAIN_KEY": wrong}   # the gateway will not go on with another key
    code, printed = refused_start(gw)
    lines = len(lines_of(gw.audit_file))
    [error] = printed   # one line, no traceback
    assert code != 0 and f"{gw.audit_file}:{lines}: the last record does not verify" in error
    assert key not in gw.log() and key not in gw.audit_file.read_text()


def test_an_edited_last_record_stops_the_start(tmp_path: Path, dev_key: DevKey,
                                               own_upstream: Upstream, token: str) -> None:
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream)
    with running(gw):
        assert allow(gw, token, "edited").status == 200
    lines = gw.audit_file.read_bytes().splitlines(keepends=True)
    assert lines[-1].count(b'"event":"closed"') == 1
    lines[-1] = lines[-1].replace(b'"event":"closed"', b'"event":"kept"')
    gw.audit_file.write_bytes(b"".join(lines))
    code, printed = refused_start(gw)
    assert code != 0
    [error] = printed   # one line, no traceback
    assert f"{gw.audit_file}:{len(lines)}: the last record does not verify" in error
    assert gw.audit_file.read_bytes() == b"".join(lines), "nothing was written"


def test_a_second_gateway_on_the_same_audit_file_refuses_to_start(
        tmp_path: Path, dev_key: DevKey, own_upstream: Upstream, token: str) -> None:
    first = audit_gateway(tmp_path / "first", dev_key, own_upstream)
    with running(first):
        second = audit_gateway(tmp_path / "second", dev_key, own_upstream,
                               file=str(first.audit_file))
        code, printed = refused_start(second)
        [error] = printed   # one line, no traceback
        assert code != 0
        assert f"{first.audit_file} is being written by another process" in error
        assert allow(first, token, "still-one-writer").status == 200
    assert [r.get("event") for r in lines_of(first.audit_file)].count("opened") == 1
    assert chain.verify(family(first.audit_file), None).ok


def test_no_sink_is_a_config_error(tmp_path: Path, dev_key: DevKey,
                                   own_upstream: Upstream) -> None:
    gw = audit_gateway(tmp_path, dev_key, own_upstream, file=None, stdout=False)
    dev_key.save(tmp_path / "keys")
    config = tmp_path / "toolgate.yaml"
    config.write_text(yaml.safe_dump(gw.config(), sort_keys=False), encoding="utf-8")
    checked = run("check", "--config", str(config), env={"UPSTREAM_TOKEN": "x"})
    assert checked.returncode != 0
    [error] = checked.stderr.splitlines()
    assert error.startswith(f"error: {config}:") and "audit: no sink" in error, error
    code, printed = refused_start(gw)
    assert code != 0 and printed == [error], printed


def test_file_and_stdout_get_the_same_bytes(tmp_path: Path, dev_key: DevKey,
                                            own_upstream: Upstream, token: str,
                                            alice: str) -> None:
    gw = audit_gateway(tmp_path / "gw", dev_key, own_upstream, stdout=True)
    with running(gw):
        assert allow(gw, token, "both").status == 200
        held = hold(gw, token, "k-both")
        assert approve(gw, alice, held.json["approval_id"]).status == 200
    written = gw.audit_file.read_bytes().splitlines(keepends=True)
    printed = [line for line in gw.log_file.read_bytes().splitlines(keepends=True)
               if line.startswith(b'{"ts":')]   # the log's own start {"timestamp":
    assert len(written) >= 10
    assert printed == written
