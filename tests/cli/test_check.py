"""`toolgate check` for a policy repository's CI: `--offline` (no keys or credentials
there) and `--format json` (one document, every problem with its file and line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.devtokens import DevKey
from tests.e2e.harness import closed_port
from tests.e2e.opa import HAVE_OPA, OpaServer

ROOT = Path(__file__).resolve().parents[2]


def _repo(tmp_path: Path) -> Path:
    """The shipped config, specs and policies, and no keys or secrets: a policy repo."""
    for name in ("tool_specs", "policies"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "toolgate.yaml", tmp_path / "toolgate.yaml")
    return tmp_path / "toolgate.yaml"


def test_offline_checks_everything_but_the_secrets(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _repo(tmp_path)
    assert main(["check", "--config", str(config)], {}) == 1
    assert "BILLING_TOKEN is not set" in capsys.readouterr().err
    assert main(["check", "--config", str(config), "--offline"], {}) == 0
    assert capsys.readouterr().out.startswith(f"ok: {config}: 5 tools")


def test_json_names_every_problem_with_its_place(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = _repo(tmp_path)
    rego = tmp_path / "policies" / "toolgate.rego"
    rego.write_text(rego.read_text().replace("package toolgate", "package toolgat", 1))
    spec = tmp_path / "tool_specs" / "get_order.yaml"
    spec.write_text(spec.read_text() + "bogus_key: 1\n")
    assert main(["check", "--config", str(config), "--offline", "--format", "json"], {}) == 1
    document = json.loads(capsys.readouterr().out)
    assert (document["ok"], document["offline"], document["summary"]) == (False, True, None)
    # Both in one run: the spec error does not hide the policy's (probed on the 4 others).
    spec_problem, policy_problem = document["problems"]
    assert Path(spec_problem["file"]).name == "get_order.yaml"
    assert spec_problem["line"] and "bogus_key" in spec_problem["message"]
    assert "gives no decision on a probe call of 4 tools" in policy_problem["message"]
    spec.write_text(spec.read_text().replace("bogus_key: 1\n", ""))
    assert main(["check", "--config", str(config), "--offline", "--format", "json"], {}) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert "gives no decision on a probe call" in problem["message"]   # the package line


def _beside_opa(tmp_path: Path, url: str) -> Path:
    """The shipped repo with its keys, asking the OPA at `url`."""
    config = _repo(tmp_path)
    DevKey.generate(kid="check").save(tmp_path / "keys")
    text = config.read_text()
    assert "  engine: embedded " in text
    config.write_text(text.replace("  engine: embedded ", f"  opa_url: {url}\n  engine: opa ", 1))
    return config


def test_beside_opa_check_asks_opa_unless_offline(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = _beside_opa(tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert main(["check", "--config", str(config), "--offline"], {}) == 0
    assert "policies at OPA" in capsys.readouterr().out
    assert main(["check", "--config", str(config), "--format", "json"],
                {"BILLING_TOKEN": "t", "CRM_TOKEN": "t", "HR_TOKEN": "t"}) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and "cannot be reached" in problems[0]["message"], problems


@pytest.mark.skipif(not HAVE_OPA, reason="the real OPA engine is not installed")
def test_beside_a_real_opa_check_probes_every_tool(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = OpaServer([ROOT / "policies"], tmp_path / "opa-good.log", revision="r7")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.rego").write_text("package toolgat\n\ndecision := 1\n")   # the wrong package
    bad = OpaServer([broken], tmp_path / "opa-bad.log")
    env = {"BILLING_TOKEN": "t", "CRM_TOKEN": "t", "HR_TOKEN": "t"}
    try:
        good.start()
        bad.start()
        assert main(["check", "--config", str(_beside_opa(tmp_path / "a", good.url))], env) == 0
        assert "(revision r7)" in capsys.readouterr().out
        assert main(["check", "--config", str(_beside_opa(tmp_path / "b", bad.url))], env) == 1
        assert "data.toolgate.decision is undefined" in capsys.readouterr().err
    finally:
        good.stop()
        bad.stop()
