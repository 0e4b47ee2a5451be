"""The README's "Running it for real", step by step, as a new user runs it: the shipped
toolgate.yaml, `keys init`, an agent token and an approver token from `toolgate token`, the
example upstream with the credentials the config names, `check`, `serve`, a forwarded call,
a held refund, and its approval through `toolgate approvals`.

Only the ports differ from the README (the shipped config's 8080/8081/9000 may be taken on a
test machine): they are set the documented way, through TOOLGATE_* variables."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import toolgate_command
from tests.e2e.net import free_port, request

pytestmark = pytest.mark.one_engine


class Session:
    """A shell in a fresh project directory: its environment and its background jobs."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory, self.env = directory, env
        self.jobs: list[subprocess.Popen[str]] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*toolgate_command(), *args], cwd=self.directory, env=self.env,
                              text=True, capture_output=True, timeout=60, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        job = subprocess.Popen([*toolgate_command(), *args], cwd=self.directory, env=self.env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
        self.jobs.append(job)
        return job

    def stop(self, job: subprocess.Popen[str]) -> tuple[int, str, str]:
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=60)
        return job.returncode, out, err


@pytest.fixture
def session(tmp_path: Path, repo_root: Path) -> Iterator[Session]:
    for name in ("tool_specs", "policies"):
        shutil.copytree(repo_root / name, tmp_path / name)
    shutil.copy(repo_root / "toolgate.yaml", tmp_path / "toolgate.yaml")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOOLGATE_") and k not in ("CRM_TOKEN", "BILLING_TOKEN",
                                                          "HR_TOKEN")}
    shell = Session(tmp_path, env)
    yield shell
    for job in shell.jobs:
        if job.poll() is None:
            job.kill()
            job.communicate()


def wait_ready(admin_port: int, job: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert job.poll() is None, job.communicate()
        with contextlib.suppress(OSError):
            if request(admin_port, "GET", "/readyz", timeout=2).status == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the gateway never became ready")


def test_running_it_for_real_as_the_readme_says(session: Session) -> None:
    assert session.run("keys", "init", "keys/").returncode == 0
    session.env.update({name: secrets.token_hex(16)
                        for name in ("CRM_TOKEN", "BILLING_TOKEN", "HR_TOKEN")})

    upstream = session.start("example-upstream", "--listen", "127.0.0.1:0")
    assert upstream.stdout is not None
    banner = upstream.stdout.readline()
    m = re.search(r"on (http://127\.0\.0\.1:\d+)$", banner.strip())
    assert m, banner
    upstream.stdout.readline()
    port, admin_port = free_port(), free_port()
    session.env.update({"TOOLGATE_LISTEN": f"127.0.0.1:{port}",
                        "TOOLGATE_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                        "TOOLGATE_ADMIN_URL": f"http://127.0.0.1:{admin_port}",
                        **{f"TOOLGATE_UPSTREAMS__{api}__URL": m.group(1)
                           for api in ("CRM", "BILLING", "HR")}})

    check = session.run("check", "--config", "toolgate.yaml")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: toolgate.yaml: 5 tools")
    gateway = session.start("serve", "--config", "toolgate.yaml")
    wait_ready(admin_port, gateway)

    token = session.run("token", "--sub", "svc-support-agent", "--agent", "support-bot",
                        "--tenant", "acme", "--scope", "crm:read orders:read billing:refund"
                        ).stdout.strip()
    order = request(port, "GET", "/orders/ord_8842?tenant_id=acme", token=token)
    assert order.status == 200, order.raw
    assert order.json["id"] == "ord_8842"
    refund = request(port, "POST", "/billing/refunds", token=token,
                     headers={"Idempotency-Key": "refund-ord_8842-2"},
                     body={"tenant_id": "acme", "order_id": "ord_8842", "amount": 250,
                           "currency": "USD"})
    assert refund.status == 202, refund.raw
    approval_id = refund.json["approval_id"]

    approver = session.run("token", "--sub", "jane.doe", "--tenant", "acme", "--role",
                           "billing-approver", "--scope", "toolgate:approve")
    assert approver.returncode == 0, approver.stderr
    session.env["TOOLGATE_APPROVER_TOKEN"] = approver.stdout.strip()
    listed = session.run("approvals", "list")
    assert listed.returncode == 0, listed.stderr
    assert approval_id in listed.stdout
    approved = session.run("approvals", "approve", approval_id, "--comment", "damaged")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert re.search(r"^status +executed$", approved.stdout, re.MULTILINE), approved.stdout
    polled = request(port, "GET", f"/v1/approvals/{approval_id}", token=token).json
    assert polled["status"] == "executed"
    assert polled["result"]["status"] == 201

    assert session.stop(gateway)[0] == 0
    code, out, err = session.stop(upstream)
    assert code == 0, err
    # What reached the API: the gateway's credential (else 401), never the agent's token.
    assert "GET /v1/orders/ord_8842?tenant_id=acme -> 200" in out
    assert re.search(r"^POST /v1/refunds -> 201  \(X-Request-Id: req_\w+; "
                     r"Idempotency-Key: refund-ord_8842-2\)$", out, re.MULTILINE), out
    assert "-> 401" not in out
