"""A soak run: minutes of mixed traffic through a real `toolgate serve`, watching for
unexpected answers, missing records, and growth in memory or open files.

Starts a small upstream and the gateway (SQLite store, file audit log, the shipped specs
and policies) as subprocesses on 127.0.0.1, then drives a mix at a fixed concurrency:
allowed calls, denied calls, calls held for approval (and their approval), retries that are
replayed, invalid arguments, bad tokens and malformed HTTP. Every `--sample` seconds it
reads the gateway's RSS and open file descriptors from /proc. At the end it compares the
decision records with the calls made, and prints a table (and `--json FILE`). It exits 1
on any unexpected answer or call without a decision record. Not part of CI: it takes as
long as you give it.

    python bench/soak.py [--seconds 600] [--concurrency 8] [--json soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_gateway import UPSTREAM  # noqa: E402
from gateway.devtokens import DevKey  # noqa: E402
from tests.e2e.harness import Gateway, free_port  # noqa: E402

REFUND = {"tenant_id": "acme", "order_id": "ord_8842", "currency": "USD"}
# What each kind of call must be answered with; anything else is unexpected.
EXPECTED = {"allow": {200}, "deny": {403}, "hold": {202}, "replay": {200, 202},
            "invalid": {422}, "bad_token": {401}, "malformed": {400}, "approve": {200}}


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


class Soak:
    def __init__(self, gw: Gateway, token: str, approver: str) -> None:
        self.gw = gw
        self.base = f"http://127.0.0.1:{gw.port}"
        self.auth = {"Authorization": f"Bearer {token}"}
        self.approver = {"Authorization": f"Bearer {approver}"}
        self.counts: collections.Counter[str] = collections.Counter()
        self.unexpected: collections.Counter[str] = collections.Counter()
        self.request_ids: set[str] = set()
        self.held: list[str] = []
        self.n = 0

    def note(self, kind: str, status: int, request_id: str | None) -> None:
        self.counts[kind] += 1
        if status not in EXPECTED[kind]:
            self.unexpected[f"{kind} {status}"] += 1
        if request_id and kind != "approve":
            self.request_ids.add(request_id)

    async def call(self, session: aiohttp.ClientSession, kind: str) -> None:
        self.n += 1
        n = self.n
        method, path, body, headers = "GET", "/crm/customers/cus_1001?tenant_id=acme", None, {}
        if kind == "deny":
            method, path = "PUT", "/payroll/employees/emp_0042/bank-account"
            body = {"tenant_id": "acme", "iban": "DE89370400440532013000"}
            headers = {"Idempotency-Key": f"deny-{n}"}
        elif kind == "hold":
            method, path, body = "POST", "/billing/refunds", {**REFUND, "amount": 250}
            headers = {"Idempotency-Key": f"hold-{n}"}
        elif kind == "replay":
            method, path, body = "POST", "/billing/refunds", {**REFUND, "amount": 20}
            headers = {"Idempotency-Key": f"replay-{n % 50}"}
        elif kind == "invalid":
            method, path, body = "POST", "/billing/refunds", {**REFUND, "amount": "lots"}
            headers = {"Idempotency-Key": f"bad-{n}"}
        auth = {"Authorization": "Bearer not-a-token"} if kind == "bad_token" else self.auth
        async with session.request(method, self.base + path, json=body,
                                   headers={**auth, **headers}) as resp:
            data = await resp.read()
            self.note(kind, resp.status, resp.headers.get("X-Request-Id"))
            if kind == "hold" and resp.status == 202:
                self.held.append(json.loads(data)["approval_id"])

    async def malformed(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.port)
        writer.write(b"GET /crm/customers/x HTTP/1.1\nHost: x\n\n")
        head = await reader.read(12)
        writer.close()
        self.note("malformed", int(head[9:12] or b"0"), None)
        self.counts["malformed_recorded"] += 1

    async def approve(self, session: aiohttp.ClientSession) -> None:
        if not self.held:
            return
        approval_id = self.held.pop(0)
        url = f"http://127.0.0.1:{self.gw.admin_port}/v1/approvals/{approval_id}/approve"
        async with session.post(url, json={}, headers=self.approver) as resp:
            await resp.read()
            self.note("approve", resp.status, None)


async def run(args: argparse.Namespace, gw: Gateway, key: DevKey) -> dict[str, Any]:
    assert gw.proc is not None
    approver = key.token("jane.doe", tenant="acme", roles=["billing-approver"],
                         scopes=["toolgate:approve"], ttl_s=args.seconds + 3600)
    token = key.token("svc-support-agent", agent="support-bot", tenant="acme",
                      scopes=["crm:read", "billing:refund", "payroll:write"],
                      ttl_s=args.seconds + 3600)
    soak = Soak(gw, token, approver)
    samples: list[dict[str, float]] = []
    mix = (["allow"] * 10 + ["deny"] * 2 + ["hold"] * 2 + ["replay"] * 3 + ["invalid"] * 2
           + ["bad_token"])
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=args.concurrency)) as session:
            async def worker(w: int) -> None:
                i = w
                while time.monotonic() - started < args.seconds:
                    i += args.concurrency
                    await soak.call(session, mix[i % len(mix)])
                    if i % 50 == 0:
                        await soak.malformed()
                    if i % 7 == 0:
                        await soak.approve(session)

            async def sampler() -> None:
                while time.monotonic() - started < args.seconds:
                    rss, fds = proc_stats(gw.proc.pid)  # type: ignore[union-attr]
                    samples.append({"t": round(time.monotonic() - started, 1),
                                    "rss_kib": rss, "fds": fds,
                                    "calls": sum(soak.counts.values())})
                    await asyncio.sleep(args.sample)

            await asyncio.gather(sampler(), *(worker(w) for w in range(args.concurrency)))
        rss, fds = proc_stats(gw.proc.pid)
        samples.append({"t": round(time.monotonic() - started, 1), "rss_kib": rss,
                        "fds": fds, "calls": sum(soak.counts.values())})
    finally:
        gw.stop()
    records = gw.records()
    decisions = {r["decision_id"] for r in records if r["kind"] == "decision"}
    missing = soak.request_ids - decisions
    parse_refusals = sum(1 for r in records if r["kind"] == "decision"
                         and r.get("code") == "bad_request")
    first = samples[len(samples) // 10] if len(samples) > 10 else samples[0]
    return {
        "seconds": args.seconds, "concurrency": args.concurrency,
        "calls": dict(soak.counts), "unexpected": dict(soak.unexpected),
        "decision_records": len(decisions), "calls_without_a_decision": len(missing),
        "malformed_requests_recorded": parse_refusals,
        "rss_kib": {"after_warmup": first["rss_kib"], "end": samples[-1]["rss_kib"],
                    "max": max(s["rss_kib"] for s in samples)},
        "fds": {"after_warmup": first["fds"], "end": samples[-1]["fds"],
                "max": max(s["fds"] for s in samples)},
        "samples": samples, "directory": str(gw.directory),
    }


def report(result: dict[str, Any]) -> None:
    calls = result["calls"]
    print(f"soak: {result['seconds']} s at concurrency {result['concurrency']}: "
          f"{sum(v for k, v in calls.items() if k != 'malformed_recorded')} requests")
    for kind, n in sorted(calls.items()):
        print(f"  {kind:<20} {n:8d}")
    print(f"unexpected answers: {result['unexpected'] or 'none'}")
    print(f"decision records: {result['decision_records']}; calls without one: "
          f"{result['calls_without_a_decision']}; malformed requests recorded: "
          f"{result['malformed_requests_recorded']}")
    rss, fds = result["rss_kib"], result["fds"]
    print(f"RSS KiB: after warm-up {rss['after_warmup']}, end {rss['end']}, max {rss['max']} "
          f"({(rss['end'] - rss['after_warmup']) / rss['after_warmup']:+.1%})")
    print(f"open fds: after warm-up {fds['after_warmup']}, end {fds['end']}, max {fds['max']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    key = DevKey.generate(kid="soak")
    upstream_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="toolgate-soak-"))
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
    gw = Gateway(work / "gw", key, f"http://127.0.0.1:{upstream_port}",
                 tool_specs=[ROOT / "tool_specs"], policies=[ROOT / "policies"])
    try:
        gw.start()
        result = uvloop.run(run(args, gw, key))
    finally:
        gw.stop()
        up.terminate()
        up.wait(10)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    # Numbers are for reading; a wrong answer or a call without its record is a failure.
    if result["unexpected"] or result["calls_without_a_decision"]:
        sys.exit(1)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
