"""`toolgate example-upstream` as a user runs it: a subprocess on loopback that refuses to
start without its credentials or its port, serves until SIGTERM, and exits 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import toolgate_command

ENV = {"CRM_TOKEN": "crm-secret-1", "BILLING_TOKEN": "billing-secret-2",
       "HR_TOKEN": "hr-secret-3"}


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOOLGATE_") and k not in ENV}
    return {**env, **extra}


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*toolgate_command(), "example-upstream", *args], env=env,
                          text=True, capture_output=True, timeout=60, check=False)


def test_it_serves_on_loopback_until_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen([*toolgate_command(), "example-upstream", "--listen", "127.0.0.1:0"],
                            env=environ(**ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the port is bound
        m = re.fullmatch(r"example upstream \(stand-in for CRM, billing and HR APIs\) on "
                         r"http://127\.0\.0\.1:(\d+)\n", banner)
        assert m, banner
        assert proc.stdout.readline() == ("checking the credentials in CRM_TOKEN, "
                                          "BILLING_TOKEN, HR_TOKEN; Ctrl-C stops it\n")
        url = f"http://127.0.0.1:{m.group(1)}/v1/orders/ord_1"
        ok = urllib.request.Request(url, headers={"Authorization": "Bearer crm-secret-1"})
        with urllib.request.urlopen(ok, timeout=10) as resp:  # noqa: S310 (loopback)
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        refused.value.close()  # it holds the connection
        assert refused.value.code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["GET /v1/orders/ord_1 -> 200", "GET /v1/orders/ord_1 -> 401"]
    assert err == ""


def test_without_its_credentials_it_does_not_start() -> None:
    result = run("--listen", "127.0.0.1:0", env=environ(BILLING_TOKEN="b"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: CRM_TOKEN, HR_TOKEN not set: the example upstream checks the credentials the "
        "gateway injects, so export the same values where each of them runs"]


def test_a_busy_port_or_a_bad_address_is_one_error_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("--listen", f"127.0.0.1:{port}", env=environ(**ENV))
    assert result.returncode == 1
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    result = run("--listen", "localhost", env=environ(**ENV))
    assert result.returncode == 1
    assert result.stderr == "error: 'localhost' is not host:port (port 0-65535)\n"


def test_it_binds_loopback_port_9000_by_default() -> None:
    result = subprocess.run([*toolgate_command(), "example-upstream", "--help"], text=True,
                            capture_output=True, timeout=60, check=True)
    assert "default 127.0.0.1:9000" in " ".join(result.stdout.split())
