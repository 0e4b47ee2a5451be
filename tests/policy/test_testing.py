"""`toolgate policy test`: discovering and running `test_*` rules, reported like `opa test`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.policy import testing
from gateway.policy.sources import load_sources
from gateway.policy.testing import Outcome, report, run_tests

MIXED = """package mixed_test

import rego.v1

test_pass if {
	1 + 1 == 2
}

test_false := false

test_undefined if {
	input.nothing == 1
}

test_error if {
	x := 1 / 0
	x == 0
}
"""
LINES = {"test_pass": 5, "test_false": 9, "test_undefined": 11, "test_error": 15}


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "mixed_test.rego"
    path.write_text(MIXED, encoding="utf-8")
    return path


def _by_rule(results: list[testing.TestResult]) -> dict[str, testing.TestResult]:
    return {r.rule.rsplit(".", 1)[1]: r for r in results}


def test_shipped_policy_tests_all_pass(repo_root: Path) -> None:
    policies = repo_root / "policies"
    test_file = policies / "toolgate_test.rego"
    names = set(re.findall(r"^(test_\w+)", test_file.read_text(encoding="utf-8"), re.M))
    results = run_tests(load_sources([policies], tests=True))
    failures = [(r.rule, r.outcome, r.message) for r in results if r.outcome is not Outcome.PASS]
    assert failures == []
    assert len(results) == len(names)
    assert len(names) >= 20
    assert {r.rule for r in results} == {f"data.toolgate_test.{n}" for n in names}
    assert {r.file for r in results} == {str(test_file)}


def test_shipped_test_lines_point_at_the_rule(repo_root: Path) -> None:
    test_file = repo_root / "policies" / "toolgate_test.rego"
    lines = test_file.read_text(encoding="utf-8").splitlines()
    for result in run_tests(load_sources([repo_root / "policies"], tests=True)):
        name = result.rule.rsplit(".", 1)[1]
        assert lines[result.line - 1].startswith(name), result


def test_without_test_files_nothing_runs(repo_root: Path) -> None:
    assert run_tests(load_sources([repo_root / "policies"])) == []


def test_pass_fail_undefined_error(mixed: Path) -> None:
    results = run_tests(load_sources([mixed.parent], tests=True))
    by_rule = _by_rule(results)
    assert {name: r.outcome for name, r in by_rule.items()} == {
        "test_pass": Outcome.PASS, "test_false": Outcome.FAIL,
        "test_undefined": Outcome.FAIL, "test_error": Outcome.ERROR}
    assert {name: r.line for name, r in by_rule.items()} == LINES
    assert all(r.file == str(mixed) for r in results)
    assert all(r.rule.startswith("data.mixed_test.") for r in results)
    assert by_rule["test_pass"].message == ""
    assert by_rule["test_false"].message == "got false"
    assert by_rule["test_undefined"].message
    assert "divide by zero" in by_rule["test_error"].message


def test_tests_see_policy_and_data(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("limits:\n  max: 200\n", encoding="utf-8")
    (tmp_path / "rules.rego").write_text(
        "package rules\n\nimport rego.v1\n\nover(x) if x > data.limits.max\n", encoding="utf-8")
    (tmp_path / "rules_test.rego").write_text(
        "package rules_test\n\nimport rego.v1\n\n"
        "test_over if data.rules.over(201)\n\n"
        "test_not_over if not data.rules.over(200)\n\n"
        "test_wrong if data.rules.over(1)\n", encoding="utf-8")
    by_rule = _by_rule(run_tests(load_sources([tmp_path], tests=True)))
    assert {n: r.outcome for n, r in by_rule.items()} == {
        "test_over": Outcome.PASS, "test_not_over": Outcome.PASS, "test_wrong": Outcome.FAIL}


def test_incremental_rule_counted_once_and_nested_package(tmp_path: Path) -> None:
    (tmp_path / "a_test.rego").write_text(
        "package org.team.a_test\n\nimport rego.v1\n\n"
        "test_twice if 1 == 2\n\ntest_twice if 1 == 1\n\n"
        "not_a_test if true\n\ntesting_helper := 1\n", encoding="utf-8")
    results = run_tests(load_sources([tmp_path], tests=True))
    assert [(r.rule, r.outcome) for r in results] == [
        ("data.org.team.a_test.test_twice", Outcome.PASS)]


def test_name_filter(mixed: Path) -> None:
    results = run_tests(load_sources([mixed.parent], tests=True), name_filter="test_pass")
    assert [r.rule for r in results] == ["data.mixed_test.test_pass"]


def test_report_verbose_looks_like_opa_test(mixed: Path) -> None:
    results = run_tests(load_sources([mixed.parent], tests=True))
    lines = list(report(results, verbose=True))
    assert lines[0] == f"{mixed}:"
    rule_lines = lines[1:5]
    assert len(rule_lines) == 4
    for line in rule_lines:
        assert re.match(r"^data\.mixed_test\.test_\w+: (PASS|FAIL|ERROR) \(\d+\.\d{3}ms\)",
                        line), line
    assert any(re.match(r"^data\.mixed_test\.test_pass: PASS \(", ln) for ln in rule_lines)
    assert any(ln.startswith("data.mixed_test.test_false: FAIL (") and "(got false)" in ln
               and ln.endswith(f"[line {LINES['test_false']}]") for ln in rule_lines)
    assert lines[5] == ""
    assert lines[6] == "-" * 80
    assert lines[7:] == ["PASS: 1/4", "FAIL: 2/4", "ERROR: 1/4"]


def test_report_quiet_shows_only_failures(mixed: Path) -> None:
    results = run_tests(load_sources([mixed.parent], tests=True))
    lines = list(report(results, verbose=False))
    assert lines[0] == f"{mixed}:"
    shown = [ln for ln in lines if ln.startswith("data.")]
    assert sorted(ln.split(":")[0] for ln in shown) == [
        "data.mixed_test.test_error", "data.mixed_test.test_false",
        "data.mixed_test.test_undefined"]
    assert lines[-3:] == ["PASS: 1/4", "FAIL: 2/4", "ERROR: 1/4"]


def test_report_all_passing_quiet_is_just_the_summary(repo_root: Path) -> None:
    results = run_tests(load_sources([repo_root / "policies"], tests=True))
    assert list(report(results, verbose=False)) == ["-" * 80,
                                                    f"PASS: {len(results)}/{len(results)}"]


def test_report_no_tests() -> None:
    assert list(report([], verbose=True)) == ["-" * 80, "no tests found"]
