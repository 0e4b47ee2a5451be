"""The `toolgate` command as a user runs it: check, policy test, keys/token, serve errors,
and the demo. These run on the shipped embedded config, so once (`one_engine`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import toolgate_command

pytestmark = pytest.mark.one_engine


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    environ.update(env or {})
    return subprocess.run([*toolgate_command(), *args], cwd=cwd, env=environ, text=True,
                          capture_output=True, timeout=timeout, check=False)


def project(tmp_path: Path, repo_root: Path) -> Path:
    """A copy of the shipped config, specs and policies, with development keys."""
    for name in ("tool_specs", "policies"):
        shutil.copytree(repo_root / name, tmp_path / name)
    shutil.copy(repo_root / "toolgate.yaml", tmp_path / "toolgate.yaml")
    assert run("keys", "init", str(tmp_path / "keys")).returncode == 0
    return tmp_path / "toolgate.yaml"


SECRETS = {"CRM_TOKEN": "a", "BILLING_TOKEN": "b", "HR_TOKEN": "c"}


def test_check_passes_on_the_shipped_files(tmp_path: Path, repo_root: Path) -> None:
    config = project(tmp_path, repo_root)
    result = run("check", "--config", str(config), env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert "5 tools" in result.stdout


def test_check_reports_every_error_with_file_and_line(tmp_path: Path,
                                                      repo_root: Path) -> None:
    config = project(tmp_path, repo_root)
    spec = tmp_path / "tool_specs" / "get_order.yaml"
    spec.write_text(spec.read_text().replace("tier: green", "tier: green\nretries: 3"))
    original = (tmp_path / "tool_specs" / "lookup_customer.yaml").read_text()
    (tmp_path / "tool_specs" / "zz_dup.yaml").write_text(original)
    (tmp_path / "tool_specs" / "zz_route.yaml").write_text(
        original.replace("name: lookup_customer", "name: lookup_customer_v2"))
    (tmp_path / "policies" / "broken.rego").write_text(
        "package toolgate.extra\n\nimport rego.v1\n\nx := {\n")
    result = run("check", "--config", str(config), env={"CRM_TOKEN": "a"})
    assert result.returncode == 1
    err = result.stderr
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if "retries" in t)
    assert f"{spec}:{line}: " in err and "unknown key 'retries'" in err
    assert re.search(r"zz_dup\.yaml:1: .*duplicate tool name 'lookup_customer' \(first "
                     r"defined at .*lookup_customer\.yaml:1\)", err)
    assert re.search(r"zz_route\.yaml:\d+: .*route GET /crm/customers/\{customer_id\} is "
                     r"already the route of 'lookup_customer'", err)
    assert re.search(r"broken\.rego:\d+: ", err)
    assert "BILLING_TOKEN is not set" in err
    assert "HR_TOKEN is not set" in err


def test_check_reports_config_errors_with_lines(tmp_path: Path, repo_root: Path) -> None:
    config = project(tmp_path, repo_root)
    data = yaml.safe_load(config.read_text())
    data["auth"]["algorithms"] = ["none"]
    data["fail_closed"] = True
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run("check", "--config", str(config), env=SECRETS)
    assert result.returncode == 1
    assert re.search(rf"{re.escape(str(config))}:\d+: .*unknown key 'fail_closed'", result.stderr)
    assert "auth.algorithms.0" in result.stderr


def test_env_override_is_checked_too(tmp_path: Path, repo_root: Path) -> None:
    config = project(tmp_path, repo_root)
    result = run("check", "--config", str(config),
                 env={**SECRETS, "TOOLGATE_POLICY__ENGINE": "magic"})
    assert result.returncode == 1
    assert "policy.engine" in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path, repo_root: Path) -> None:
    config = project(tmp_path, repo_root)
    result = run("serve", "--config", str(config), env={})  # no upstream secrets
    assert result.returncode == 1
    assert "CRM_TOKEN is not set" in result.stderr


def test_policy_test_passes_on_the_shipped_policies(repo_root: Path) -> None:
    result = run("policy", "test", str(repo_root / "policies"), "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    count = (repo_root / "policies" / "toolgate_test.rego").read_text().count("\ntest_")
    assert f"PASS: {count}/{count}" in result.stdout
    assert "data.toolgate_test.test_red_deny: PASS" in result.stdout


def test_policy_test_reports_failures_and_errors(tmp_path: Path, repo_root: Path) -> None:
    shutil.copytree(repo_root / "policies", tmp_path / "policies")
    data = tmp_path / "policies" / "data.yaml"
    data.write_text(data.read_text().replace("USD: 200", "USD: 300"))  # loosen a limit
    (tmp_path / "policies" / "more_test.rego").write_text(
        "package more_test\n\nimport rego.v1\n\ntest_errors if { 1 / 0 }\n")
    result = run("policy", "test", str(tmp_path / "policies"))
    assert result.returncode == 2
    assert re.search(r"test_\w+: FAIL", result.stdout)
    assert "data.more_test.test_errors: ERROR" in result.stdout
    assert re.search(r"FAIL: \d+/\d+", result.stdout)


def test_token_command_mints_a_token_the_gateway_accepts(tmp_path: Path) -> None:
    assert run("keys", "init", str(tmp_path / "keys")).returncode == 0
    assert run("keys", "init", str(tmp_path / "keys")).returncode == 1  # never overwrites
    assert oct((tmp_path / "keys" / "private.pem").stat().st_mode & 0o777) == "0o600"
    result = run("token", "--keys", str(tmp_path / "keys"), "--sub", "svc", "--tenant",
                 "acme", "--scope", "orders:read crm:read")
    assert result.returncode == 0
    assert result.stdout.count(".") == 2


def test_demo_shows_every_outcome(tmp_path: Path, repo_root: Path) -> None:
    result = run("demo", "--dir", str(tmp_path / "demo"), cwd=repo_root)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for label in ("FORWARDED", "QUEUED for approval", "SCHEMA REJECTED", "SCOPE REJECTED",
                  "POLICY DENIED", "TOOL NOT ALLOWED", "UNAUTHENTICATED"):
        assert label in out, label
    # queued -> approved through the CLI -> executed -> the agent fetches the result
    assert "$ toolgate approvals approve apr_" in out
    assert "status       executed" in out
    assert "status=executed, upstream answered 201" in out
    assert "Idempotent-Replayed: true" in out
    audit = tmp_path / "demo" / "audit" / "toolgate.jsonl"
    assert f"audit log: {audit}" in out
    assert len(audit.read_text().splitlines()) >= 12
    lines = audit.read_text().splitlines()
    head = json.loads(lines[-1])["hash"]
    assert f"$ toolgate audit verify {audit}\n  ok: {len(lines)} records in 1 files, " \
           f"seq 1..{len(lines)}, head {head}" in out
