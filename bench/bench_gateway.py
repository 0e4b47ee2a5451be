"""Gateway overhead, measured against a baseline in the same run.

Starts a small upstream and `toolgate serve` as subprocesses on 127.0.0.1, then drives the
same request pattern (a) straight at the upstream and (b) through the gateway, with a
fixed number of requests at a fixed concurrency. Prints throughput, p50/p99 latency and the
ratio to the baseline; then in-process micro-benchmarks of the policy decision and of
token verification. Nothing here passes or fails: it prints numbers.

    python bench/bench_gateway.py [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.devtokens import DevKey  # noqa: E402
from tests.e2e.harness import Gateway, free_port, request  # noqa: E402

UPSTREAM = """
import sys
from aiohttp import web
import uvloop

async def handle(request):
    await request.read()
    return web.json_response({"id": "cus_1001", "name": "Ada", "status": "created",
                              "refund_id": "re_1"}, status=200)

app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""


async def load(url: str, n: int, concurrency: int, *, method: str, headers: dict[str, str],
               body: bytes | None) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for i in counter:
                hdrs = dict(headers)
                if "Idempotency-Key" in hdrs:
                    hdrs["Idempotency-Key"] = f"bench-{i}"
                start = time.perf_counter()
                async with session.request(method, url, headers=hdrs, data=body) as resp:
                    await resp.read()
                    if resp.status >= 300:
                        raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def summary(label: str, elapsed: float, lat: list[float], base_rps: float | None,
            base_p50: float | None) -> tuple[float, float]:
    lat = sorted(lat)
    rps = len(lat) / elapsed
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    ratio = ""
    if base_rps and base_p50:
        ratio = (f"   throughput x{rps / base_rps:.2f} of baseline, "
                 f"p50 +{p50 - base_p50:.2f} ms")
    print(f"{label:<44} {rps:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms{ratio}")
    return rps, p50


async def drive(args: argparse.Namespace, upstream_port: int, gw: Gateway,
                token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    refund = (b'{"tenant_id": "acme", "order_id": "ord_1234", "amount": 120, '
              b'"currency": "USD"}')
    cases = [
        ("GET  lookup_customer (green)", "GET",
         "/crm/customers/cus_1001?tenant_id=acme", "/v1/customers/cus_1001?tenant_id=acme",
         {}, None),
        ("POST create_refund_request (yellow, allow)", "POST", "/billing/refunds",
         "/v1/refunds", {"Idempotency-Key": "x", "Content-Type": "application/json"}, refund),
    ]
    for label, method, path, upstream_path, headers, body in cases:
        # Warm both paths (connections, caches) before measuring.
        direct = f"http://127.0.0.1:{upstream_port}{upstream_path}"
        gateway = f"http://127.0.0.1:{gw.port}{path}"
        through = {**auth, **headers}
        await load(direct, 200, args.concurrency, method=method, headers=headers, body=body)
        await load(gateway, 200, args.concurrency, method=method, headers=through, body=body)
        elapsed, lat = await load(direct, args.requests, args.concurrency, method=method,
                                  headers=headers, body=body)
        base = summary(f"baseline: upstream direct, {method}", elapsed, lat, None, None)
        elapsed, lat = await load(gateway, args.requests, args.concurrency, method=method,
                                  headers=through, body=body)
        summary(f"gateway:  {label}", elapsed, lat, *base)


def micro(key: DevKey) -> None:
    """Per-decision costs inside one process, without HTTP."""
    from gateway.auth import TokenVerifier  # noqa: PLC0415
    from gateway.config import AuthSettings  # noqa: PLC0415
    from gateway.keys import load_keys  # noqa: PLC0415
    from gateway.policy import load_sources  # noqa: PLC0415
    from gateway.policy.embedded import EmbeddedEngine, compile_engine, evaluate_json  # noqa: PLC0415

    sources = load_sources([ROOT / "policies"])
    doc = {"tool": {"name": "create_refund_request", "tier": "yellow", "scopes": [],
                    "upstream": "billing", "mode": "enforce"},
           "args": {"tenant_id": "acme", "order_id": "ord_1", "amount": 120,
                    "currency": "USD"},
           "principal": {"sub": "s", "agent": "a", "tenant": "acme", "scopes": [],
                         "roles": [], "claims": {}},
           "run": {"id": None, "tool_calls": 0, "spent": {}},
           "request": {"id": "r", "method": "POST", "path": "/billing/refunds",
                       "idempotency_key": "k", "time": "2026-01-01T00:00:00Z",
                       "source_ip": "127.0.0.1"}}
    import orjson  # noqa: PLC0415
    engine = compile_engine(sources)
    text = orjson.dumps(doc).decode()
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        evaluate_json(engine, "data.toolgate.decision", text)
    direct = (time.perf_counter() - start) / n * 1e6
    print(f"{'policy decision, regorus on the calling thread':<56} {direct:8.1f} us")

    async def threaded() -> float:
        eng = EmbeddedEngine(sources, "data.toolgate.decision", 1000)
        try:
            for _ in range(200):
                await eng.evaluate(doc)
            start = time.perf_counter()
            for _ in range(n):
                await eng.evaluate(doc)
            return (time.perf_counter() - start) / n * 1e6
        finally:
            await eng.close()

    print(f"{'policy decision, EmbeddedEngine.evaluate (input encoding too)':<56} "
          f"{uvloop.run(threaded()):8.1f} us")

    with tempfile.TemporaryDirectory() as d:
        key.save(Path(d))
        settings = AuthSettings(issuer="https://idp.example.com", audience="toolgate",
                                algorithms=("RS256",), jwks_file=Path(d) / "jwks.json")
        keys = load_keys(settings, {})
    token = key.token("s", scopes=["x"])
    for label, size in (("token verify, uncached (RS256)", 0), ("token verify, cached", 100)):
        verifier = TokenVerifier(
            AuthSettings(**{**settings.__dict__, "token_cache_size": size}), keys)
        start = time.perf_counter()
        for _ in range(2000):
            verifier.verify(token)
        print(f"{label:<56} {(time.perf_counter() - start) / 2000 * 1e6:8.1f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--store", default=None,
                        help="state store URL for the gateway (default: SQLite in a temp dir); "
                             "e.g. postgresql://postgres@127.0.0.1:5432/DB")
    args = parser.parse_args()

    key = DevKey.generate(kid="bench")
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
    with tempfile.TemporaryDirectory() as d:
        gw = Gateway(Path(d), key, f"http://127.0.0.1:{upstream_port}",
                     tool_specs=[ROOT / "tool_specs"], policies=[ROOT / "policies"],
                     extra={"store": args.store} if args.store else {})
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    request(upstream_port, "GET", "/", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            gw.start()
            token = key.token("svc-bench", tenant="acme", agent="bench",
                              scopes=["crm:read", "billing:refund"])
            print(f"{os.cpu_count()} CPUs; {args.requests} requests per case at concurrency "
                  f"{args.concurrency}; store {args.store or 'sqlite'}; load generator, "
                  "gateway and upstream share the machine")
            uvloop.run(drive(args, upstream_port, gw, token))
            records = len((Path(d) / "audit" / "toolgate.jsonl").read_bytes().splitlines())
            print(f"audit records written during the run: {records}")
        finally:
            gw.stop()
            upstream.terminate()
            upstream.wait(10)
    micro(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
