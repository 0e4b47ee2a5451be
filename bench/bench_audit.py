"""The audit chain's cost: writing sealed records, and verifying a chain.

Writes N decision records shaped like the gateway's (about 1 KB each, with the policy
input) through `AuditLog`, with each `fsync` mode, next to the same bytes appended with a
bare `write(2)` (the baseline: what any file sink costs), then verifies the chain with
`toolgate audit verify`'s engine and prints records/s and MB/s, and how long a month of
records at a given call rate would take. Nothing here passes or fails: it prints numbers.

    python bench/bench_audit.py [--records 200000] [--calls-per-second 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audit import chain  # noqa: E402
from gateway.audit.files import family  # noqa: E402
from gateway.audit.log import AuditLog  # noqa: E402
from gateway.audit.settings import AuditSettings, Fsync  # noqa: E402


def record(n: int) -> dict[str, object]:
    principal = {"sub": "svc-support-agent", "agent": "support-bot", "tenant": "acme"}
    args = {"tenant_id": "acme", "order_id": f"ord_{n}", "currency": "USD",
            "reason": "damaged", "amount": 120 + n % 200, "customer_email": "[REDACTED]"}
    return {
        "decision_id": f"req_{n:032x}", "trace_id": f"{n:032x}",
        "policy_revision": "276a12bde14341f9", "spec_revision": "9f1c2d3e4b5a6978",
        "principal": principal, "run_id": "run-1", "tool": "create_refund_request",
        "action": "allow", "shadow": False, "stage": "policy", "code": None,
        "message": None, "status": None, "reasons": ["under_limit: amount is under 200"],
        "args": args, "args_valid": True, "spend": {"USD": 120.0},
        "idempotency_key": f"refund-{n}", "approval_id": None,
        "latency_ms": {"total": 0.9, "policy": 0.4},
        "input": {"tool": {"name": "create_refund_request", "tier": "yellow",
                           "scopes": ["billing:refund"], "upstream": "billing",
                           "mode": "enforce"},
                  "args": args, "principal": {**principal, "scopes": ["billing:refund"],
                                              "roles": [], "claims": {}},
                  "run": {"id": "run-1", "tool_calls": n % 10, "calls_per_tool": {},
                          "spent": {"USD": 40.0}},
                  "request": {"id": f"req_{n:032x}", "method": "POST",
                              "path": "/billing/refunds", "idempotency_key": f"refund-{n}",
                              "time": "2026-12-02T22:54:40.450226Z",
                              "source_ip": "127.0.0.1", "entrance": "rest", "bucket": 42}},
    }


def bench_write(directory: Path, n: int, fsync: Fsync) -> tuple[float, Path]:
    path = directory / f"write-{fsync}.jsonl"
    # Rotated at 32 MB, like a busy day's files: verify reads them in parallel.
    log = AuditLog(AuditSettings(file=path, fsync=fsync, rotate_bytes=32 << 20))
    records = [record(i) for i in range(n)]
    start = time.perf_counter()
    for r in records:
        log.write("decision", r)
    elapsed = time.perf_counter() - start
    log.close()
    return n / elapsed, path


def bench_bare(directory: Path, n: int, sample: Path) -> float:
    lines = [line for f in family(sample)
             for line in f.read_bytes().splitlines(keepends=True)][:n]
    fd = os.open(directory / "bare.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    start = time.perf_counter()
    for line in lines:
        os.write(fd, line)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return len(lines) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--calls-per-second", type=float, default=10.0,
                        help="the average call rate a month of records is sized at")
    parser.add_argument("--fsync-records", type=int, default=2_000,
                        help="records for fsync: always (each one waits for the disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="toolgate-bench-audit-") as tmp:
        directory = Path(tmp)
        print(f"writing {args.records} records (~{len(str(record(0)))} bytes of fields each)")
        rates = {}
        for fsync in (Fsync.NEVER, Fsync.INTERVAL):
            rates[fsync], sample = bench_write(directory, args.records, fsync)
        rates[Fsync.ALWAYS], _ = bench_write(directory, args.fsync_records, Fsync.ALWAYS)
        bare = bench_bare(directory, args.records, sample)
        print(f"  bare write(2) of the same lines: {bare:>10,.0f} records/s (baseline)")
        for fsync, rate in rates.items():
            print(f"  AuditLog, fsync {fsync:<8}      {rate:>10,.0f} records/s "
                  f"({1e6 / rate:,.1f} µs/record, {rate / bare:.2f}x the baseline)")
        size = sum(f.stat().st_size for f in family(sample))
        start = time.perf_counter()
        result = chain.verify(family(sample), None)
        elapsed = time.perf_counter() - start
        assert result.ok, result.problem
        rate = result.records / elapsed
        print(f"verify: {result.records:,} records in {len(result.files)} files, "
              f"{size / 1e6:,.1f} MB in {elapsed:.2f} s on {os.cpu_count()} cores: "
              f"{rate:,.0f} records/s, {size / 1e6 / elapsed:,.1f} MB/s")
        month = args.calls_per_second * 86_400 * 30 * 2   # a decision and an outcome
        print(f"a month at {args.calls_per_second:g} calls/s (~{month / 1e6:,.1f} M records): "
              f"~{month / rate / 60:,.1f} min to verify")


if __name__ == "__main__":
    main()
