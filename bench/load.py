"""The load benchmark: Toolgate under wrk and hey, against the same upstream straight.

    python bench/load.py [--quick] [--duration 10] [--connections 64] [--rates 100 1000]
                         [--workers N] [--store sqlite|postgresql://...] [--json FILE]

Starts nginx (one worker, static JSON) as the upstream and `toolgate serve` on the bench
config (`bench/config/`: RS256 keys from `toolgate keys init`, SQLite, the file audit sink,
the shipped policy with bench limits), on free loopback ports. Four scenarios go through the
gateway - allow (forwarded), deny (403 by policy), hold (202, an approval each) and replay
(one completed key, answered from the store) - and the allowed refund also goes straight to
nginx: the baseline. Each in every mode: `max` (wrk, saturation) and `rate<N>` (hey, N
req/s). Per run: req/s, p50/p90/p99, errors (unexpected answers and socket errors), CPU per
call of the target's process tree, its memory, how many calls reached nginx, and, for the
gateway, the mean time of each pipeline stage from its own `toolgate_stage_seconds`.

Every wait is bounded; everything started is stopped on the way out (also on Ctrl-C and
SIGTERM) and `ps` confirms it. The load generator, gateway and upstream share the machine:
compare rows within one run, and read the ratios, not the absolute numbers. Speed is never
pass/fail here; a wrong answer is (exit 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadrun import drivers, stages
from bench.loadrun.procs import (
    Processes,
    RssSampler,
    RunError,
    cpu_seconds,
    hwm_mib,
)
from bench.loadrun.report import DIRECT, GATEWAY, Row, baseline, stage_table, table
from bench.loadrun.scenarios import ALLOW, RUN_ID, SCENARIOS, Key, Scenario
from bench.loadrun.targets import (
    DEFAULT_STORE,
    Gateway,
    Upstream,
    call,
    free_ports,
    start_gateway,
    start_upstream,
    toolgate_binary,
)

NGINX_SBIN = "/usr/sbin/nginx"
APT = "apt-get install -y --no-install-recommends wrk hey nginx"
SETTLE_S = 0.5   # after a run, for calls still in flight to finish before the counts are read


class Bench:
    """One bench run: the targets, the keys it uses, and the rows it measured."""

    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: Path) -> None:
        self.args, self.procs, self.workdir = args, procs, workdir
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.replay_key = f"bench-replay-{self.stamp}"
        self.rows: list[Row] = []
        self.bodies = {s.name: workdir / f"{s.name}.json" for s in SCENARIOS}
        for s in SCENARIOS:
            self.bodies[s.name].write_bytes(orjson.dumps(s.args))

    def start(self, nginx: str) -> tuple[Upstream, Gateway]:
        upstream = start_upstream(self.procs, nginx, self.workdir, free_ports(1)[0])
        gateway = start_gateway(self.procs, toolgate_binary(), self.workdir, upstream.port,
                                self.args.store, self.args.workers)
        return upstream, gateway

    def headers(self, gw: Gateway, key: str | None) -> dict[str, str]:
        out = {"Content-Type": "application/json", "Authorization": f"Bearer {gw.token}",
               "X-Agent-Run-Id": RUN_ID}
        return out if key is None else {**out, "Idempotency-Key": key}

    def smoke(self, up: Upstream, gw: Gateway) -> None:
        """Each scenario's call, answered as expected, before anything is measured: a
        benchmark of the wrong answer measures nothing. The replay key's first call is
        made here, so every measured call with it is a replay."""
        body = self.bodies[ALLOW.name].read_bytes()
        direct = call(up.port, "POST", "/refunds", body, {"Content-Type": "application/json"})
        _expect(direct.status == 201 and b"rf_0001" in direct.body, "direct", direct)
        for s in SCENARIOS:
            body = self.bodies[s.name].read_bytes()
            # (key, whether the answer must be a replay): wrk's variant, then hey's
            calls = [(self.replay_key, False), (self.replay_key, True)] \
                if s.wrk_key is Key.FIXED else [(f"smoke-{self.stamp}-{s.name}", False),
                                                (None, False)]
            for key, replay in calls:
                got = call(gw.port, "POST", "/refunds", body, self.headers(gw, key))
                _expect(got.status in s.expected
                        and (got.headers.get("Idempotent-Replayed") == "true") == replay
                        and (s is not ALLOW or b"rf_0001" in got.body),
                        f"{s.name} (key {key})", got)
        print("smoke: every scenario answered as expected", file=sys.stderr)

    def drive(self, mode: str, s: Scenario, url: str, gw: Gateway, out: Path) -> drivers.Load:
        dur = self.args.duration
        if mode == "max":
            key = self.replay_key if s.wrk_key is Key.FIXED else f"{self.stamp}-{mode}-{s.name}"
            env = {**os.environ, "BODY_FILE": str(self.bodies[s.name]), "AUTH_TOKEN": gw.token,
                   "RUN_ID": RUN_ID, "KEY_MODE": str(s.wrk_key), "KEY": key}
            return drivers.wrk(self.procs, url, env, dur, self.args.connections, out)
        headers = self.headers(gw, self.replay_key if s.hey_key is Key.FIXED else None)
        headers.pop("Content-Type")   # hey -T sets it
        return drivers.hey(self.procs, url, self.bodies[s.name], headers,
                           int(mode.removeprefix("rate")), dur, out)

    def measure(self, mode: str, s: Scenario, target: str, up: Upstream, gw: Gateway) -> Row:
        port, root = (up.port, up.pid) if target == DIRECT else (gw.port, gw.pid)
        before = stages.scrape(gw.admin_port) if target == GATEWAY else {}
        served, held = up.served(), gw.approvals()
        cpu = cpu_seconds(root)
        with RssSampler(root) as rss:
            load = self.drive(mode, s, f"http://127.0.0.1:{port}/refunds", gw,
                              self.workdir / f"{mode}-{target}-{s.name}.out")
        time.sleep(SETTLE_S)
        cpu = cpu_seconds(root) - cpu
        forwarded = up.served() - served - 1      # the status request counts itself
        now_held = gw.approvals()
        timings = (stages.delta(before, stages.scrape(gw.admin_port)) if target == GATEWAY
                   else {})
        row = Row(mode, s.name, target, self.args.duration, load,
                  frozenset({201}) if target == DIRECT else s.expected,
                  must_replay=target == GATEWAY and s.wrk_key is Key.FIXED,
                  must_not_forward=target == GATEWAY and not s.forwarded, cpu_s=cpu,
                  rss_mib=rss.peak_mib, hwm_mib=hwm_mib(root), forwarded=forwarded,
                  approvals=None if held is None or now_held is None else now_held - held,
                  stages=timings)
        print(f"{mode:<9}{s.name:<8}{target:<8} {load.rps:8.0f} req/s  p50 {load.p50_ms:.2f} ms"
              f"  errors {row.errors}  statuses {dict(load.statuses)}", file=sys.stderr)
        return row

    def run(self, nginx: str) -> None:
        up, gw = self.start(nginx)
        self.smoke(up, gw)
        # Warm-up: connection pools, SQLite's page cache, the token cache.
        for target, target_port in ((DIRECT, up.port), (GATEWAY, gw.port)):
            env = {**os.environ, "BODY_FILE": str(self.bodies[ALLOW.name]),
                   "AUTH_TOKEN": gw.token, "RUN_ID": RUN_ID, "KEY_MODE": "fresh",
                   "KEY": f"{self.stamp}-warmup"}
            drivers.wrk(self.procs, f"http://127.0.0.1:{target_port}/refunds", env,
                        1 if self.args.quick else 2, 8, self.workdir / f"warmup-{target}.out")
        for mode in self.modes:
            runs = [(s, DIRECT) for s in SCENARIOS if s.direct] + [(s, GATEWAY) for s in SCENARIOS]
            for s, target in runs:
                self.rows.append(self.measure(mode, s, target, up, gw))
                time.sleep(SETTLE_S)

    @property
    def modes(self) -> list[str]:
        return ["max", *(f"rate{r}" for r in self.args.rates)]


def _expect(ok: bool, what: str, got: object) -> None:
    if not ok:
        raise RunError(f"smoke call {what} answered wrongly: {got}")


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C does, through the `finally` that stops everything."""
    raise SystemExit(128 + signum)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="CI: 2 s runs, saturation and 100 req/s only")
    p.add_argument("--duration", type=int, help="seconds per run (default 10; --quick: 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--rates", type=int, nargs="+",
                   help="fixed rates in req/s (default 100 1000; --quick: 100)")
    p.add_argument("--workers", type=int, default=1, help="toolgate serve --workers N")
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="the gateway's store (default SQLite in the run's directory)")
    p.add_argument("--json", type=Path, help="where to write the results "
                   "(default: toolgate-load-<UTC time>.json in the temp directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 10)
    args.rates = args.rates or ([100] if args.quick else [100, 1000])
    if args.store == "sqlite":
        args.store = DEFAULT_STORE
    return args


def tools() -> tuple[list[str], str | None]:
    """What is missing of wrk, hey and nginx; and nginx's path (Debian's is not on a
    normal user's PATH)."""
    nginx = shutil.which("nginx") or (NGINX_SBIN if os.access(NGINX_SBIN, os.X_OK) else None)
    missing = [t for t in ("wrk", "hey") if shutil.which(t) is None]
    return missing + ([] if nginx else ["nginx"]), nginx


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    missing, nginx = tools()
    if missing or nginx is None:
        print(f"load.py: {', '.join(missing)} not found; install with: {APT}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_signal)
    # Also when started in the background by a shell, which ignores SIGINT for its jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="toolgate-load-"))
    procs = Processes()
    bench = Bench(args, procs, workdir)
    out = args.json or Path(tempfile.gettempdir()) / f"toolgate-load-{bench.stamp}.json"
    failure = None
    try:
        bench.run(nginx)
    except RunError as exc:
        failure = str(exc)
    except (KeyboardInterrupt, SystemExit):
        failure = "interrupted"
    finally:
        procs.stop_all()
        left = procs.leftovers()
    rows = bench.rows
    print(f"\n{args.duration} s per run; max = wrk -t1 -c{args.connections}; rateN = N req/s "
          f"from ceil(N/{drivers.PER_HEY}) staggered hey -c1; cpu and memory are the target's "
          f"process tree; ratios are against the direct row of the same mode\n")
    print(table(rows))
    print("\nmean time per call in each gateway stage (toolgate_stage_seconds and the whole-"
          "call histograms)\n")
    print(stage_table(rows))
    wrong = [f"{r.mode} {r.scenario} {r.target}: {r.errors}" for r in rows if r.errors]
    out.write_bytes(orjson.dumps(_results(args, bench, workdir, left, failure),
                                 option=orjson.OPT_INDENT_2))
    print(f"\nresults: {out}")
    print(f"left running: {left or 'nothing'}")
    if failure or wrong or left:
        print(f"load.py: FAILED: {failure or ''} {'; '.join(wrong)} "
              f"(work directory kept: {workdir})", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _results(args: argparse.Namespace, bench: Bench, workdir: Path, left: list[str],
             failure: str | None) -> Mapping[str, object]:
    return {"started": bench.stamp, "duration_s": args.duration,
            "connections": args.connections, "modes": bench.modes, "workers": args.workers,
            "store": args.store.split(":", 1)[0], "cpus": os.cpu_count(),
            "workdir": str(workdir), "failure": failure, "left_running": left,
            "runs": [r.to_json(baseline(bench.rows, r)) for r in bench.rows]}


if __name__ == "__main__":
    sys.exit(main())
