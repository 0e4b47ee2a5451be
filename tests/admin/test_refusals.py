"""The admin port's refusal ledger: a token bucket per client, and one bounded record per
window however many clients and refusals there were."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.admin import refusals
from gateway.admin.refusals import BURST, MAX_COUNTS, OTHER, RATE, SAMPLE, RefusalLedger
from gateway.audit.log import AuditLog
from gateway.config import AuditSettings
from tests.support import FakeClock


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def ledger(audit_path: Path, clock: FakeClock) -> Iterator[RefusalLedger]:
    log = AuditLog(AuditSettings(file=audit_path))
    yield RefusalLedger(log, clock)
    log.close()


def written(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in found if r["kind"] != "audit"]   # not the log's own records


def test_a_client_gets_its_burst_then_its_rate(ledger: RefusalLedger, clock: FakeClock) -> None:
    assert all(ledger.allow("10.0.0.1") for _ in range(int(BURST)))
    assert not ledger.allow("10.0.0.1")
    assert ledger.allow("10.0.0.2"), "each client has its own bucket"
    clock.advance(1 / RATE)
    assert ledger.allow("10.0.0.1")
    assert not ledger.allow("10.0.0.1")


def test_one_record_per_window_with_counts_by_client_identity_and_code(
        ledger: RefusalLedger, audit_path: Path) -> None:
    for _ in range(3):
        ledger.count("10.0.0.1", "unauthenticated", "/v1/approvals")
    ledger.count("10.0.0.1", "insufficient_scope", "/v1/approvals/apr_1/approve", "svc-agent")
    ledger.allow("10.0.0.1")
    ledger.flush()
    ledger.flush()   # nothing refused since: no record
    [record] = written(audit_path)
    assert record["kind"] == "admin_refusals"
    assert (record["total"], record["clients"], record["rate_limited"]) == (4, 1, 0)
    assert record["counts"] == [
        {"client": "10.0.0.1", "sub": None, "code": "unauthenticated", "count": 3},
        {"client": "10.0.0.1", "sub": "svc-agent", "code": "insufficient_scope", "count": 1}]
    assert [s["code"] for s in record["sample"]] == ["unauthenticated"] * 3 + [
        "insufficient_scope"]


def test_the_record_and_the_memory_stay_bounded(ledger: RefusalLedger, audit_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusals, "MAX_CLIENTS", 100)
    for i in range(1000):
        client = f"10.0.{i // 256}.{i % 256}"
        ledger.count(client, "unauthenticated", "/" + "p" * 10_000, "s" * 10_000)
        ledger.allow(client)
    ledger.flush()
    [record] = written(audit_path)
    assert record["total"] == 1000
    assert record["clients"] == 101, "100 clients, and everyone after them as one"
    assert len(record["counts"]) <= MAX_COUNTS
    assert {"client": OTHER, "sub": None, "code": "unauthenticated", "count": 900} \
        in record["counts"]
    assert len(record["sample"]) == SAMPLE
    fields = {k: v for k, v in record.items() if k not in ("seq", "prev_hash", "hash")}
    assert len(json.dumps(fields)) < 16_384
    assert len(ledger._buckets) <= 100
