"""What the load goes to: nginx as the upstream (and the baseline), and `toolgate serve`.

Both run from configs rendered into the run's work directory, on free loopback ports, as
processes of `procs.Processes`. The gateway is set up the way the README tells an operator
to: `toolgate keys init`, `toolgate serve --config`, `toolgate token`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadrun.procs import Processes, RunError

CONFIG = Path(__file__).resolve().parents[1] / "config"
SHIPPED_POLICY = Path(__file__).resolve().parents[2] / "policies" / "toolgate.rego"
# The credential the gateway injects upstream: a bench value, which nginx never checks.
UPSTREAM_SECRET = "bench-upstream-secret"  # noqa: S105


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: Mapping[str, str] | None = None, timeout_s: float = 10) -> Answer:
    """One HTTP request to 127.0.0.1 (the smoke calls and the scrapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Answer(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports nobody listens on now (held open together while asked,
    so the kernel hands out different ones)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def render(template: str, out: Path, **values: object) -> Path:
    text = (CONFIG / template).read_text(encoding="utf-8")
    out.write_text(string.Template(text).substitute(values), encoding="utf-8")
    return out


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, log: Path,
               timeout_s: float = 60) -> None:
    """Until `path` answers 200; fails at once, with the log's tail, if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RunError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")
        try:
            if call(port, "GET", path, timeout_s=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RunError(f"{proc.args[0]} not ready on :{port}{path} after {timeout_s:.0f} s")


@dataclass(frozen=True)
class Upstream:
    port: int
    pid: int

    def served(self) -> int:
        """Requests nginx has answered so far (stub_status); this request included."""
        text = call(self.port, "GET", "/nginx_status").body.decode()
        return int(text.splitlines()[2].split()[2])


def start_upstream(procs: Processes, nginx: str, workdir: Path, port: int) -> Upstream:
    (workdir / "nginx_tmp").mkdir()
    conf = render("nginx.conf.in", workdir / "nginx.conf", workdir=workdir, port=port)
    log = workdir / "nginx.out"
    # -e: nginx opens its compiled-in error log before it reads the config; keep it ours.
    proc = procs.start([nginx, "-e", str(workdir / "nginx.error.log"), "-p", f"{workdir}/",
                        "-c", str(conf), "-g", "daemon off;"], out=log)
    wait_ready(proc, port, "/nginx_status", log)
    return Upstream(port, proc.pid)


def toolgate_binary() -> str:
    """The `toolgate` installed next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "toolgate"
    found = str(beside) if beside.exists() else shutil.which("toolgate")
    if found is None:
        raise RunError("no toolgate next to this python or on PATH: activate the venv")
    return found


DEFAULT_STORE = "sqlite:///state/toolgate.db"   # relative to the config: the run's directory


@dataclass(frozen=True)
class Gateway:
    port: int
    admin_port: int
    pid: int
    token: str
    db: Path | None   # the SQLite file, when the store is the default one

    def approvals(self) -> int | None:
        """Approval rows in the store: one per held call, counted where they are kept
        (read-only, beside the running gateway: SQLite's WAL lets readers in)."""
        if self.db is None:
            return None
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True,
                                                timeout=10)) as db:
            return int(db.execute("SELECT count(*) FROM approvals").fetchone()[0])


def start_gateway(procs: Processes, toolgate: str, workdir: Path, upstream_port: int,
                  store: str, workers: int) -> Gateway:
    """`toolgate serve` on the bench config, ready, with an agent token for tenant acme."""
    serve = [toolgate, "serve", "--config"]
    if workers > 1:   # the flag is only passed when asked for, so N=1 runs on any version
        helptext = subprocess.run([toolgate, "serve", "--help"], capture_output=True, text=True,
                                  timeout=30, check=False).stdout
        if "--workers" not in helptext:
            raise RunError("--workers: this toolgate's `serve` has no --workers option yet")
    gw_dir = workdir / "gateway"
    gw_dir.mkdir()
    keys = gw_dir / "keys"
    subprocess.run([toolgate, "keys", "init", str(keys)], capture_output=True, timeout=30,
                   check=True)
    port, admin_port = free_ports(2)
    conf = render("toolgate.yaml.in", gw_dir / "toolgate.yaml", port=port,
                  admin_port=admin_port, upstream_port=upstream_port,
                  spec=CONFIG / "refund.yaml", policy=SHIPPED_POLICY, data=CONFIG / "data.yaml",
                  store=store)
    serve.append(str(conf))
    if workers > 1:
        serve += ["--workers", str(workers)]
    env = {**os.environ, "BENCH_TOKEN": UPSTREAM_SECRET}
    log = workdir / "toolgate.out"
    proc = procs.start(serve, out=log, cwd=gw_dir, env=env)
    wait_ready(proc, admin_port, "/readyz", log)
    token = subprocess.run(
        [toolgate, "token", "--keys", str(keys), "--sub", "bench-agent", "--agent", "bench",
         "--tenant", "acme", "--scope", "billing:refund", "--ttl", "7200"],
        capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    db = gw_dir / "state" / "toolgate.db" if store == DEFAULT_STORE else None
    return Gateway(port, admin_port, proc.pid, token, db)
