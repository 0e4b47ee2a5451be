"""`load_sources`: which files are policy, where data files are mounted, the revision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.core.errors import LoadErrors
from gateway.policy.sources import PolicySources, load_sources

POLICY = 'package toolgate\n\nimport rego.v1\n\ndecision := {"action": "deny", "reasons": []}\n'


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    root = tmp_path / "policies"
    _write(root / "toolgate.rego", POLICY)
    return root


def _load_errors(paths: list[Path], *, tests: bool = False) -> LoadErrors:
    with pytest.raises(LoadErrors) as info:
        load_sources(paths, tests=tests)
    return info.value


def test_shipped_policies(repo_root: Path) -> None:
    sources = load_sources([repo_root / "policies"])
    assert [Path(name).name for name, _ in sources.modules] == ["toolgate.rego"]
    assert sources.data["toolgate"]["tenant_argument"] == "tenant_id"
    assert sources.data["toolgate"]["limits"]["create_refund_request"]["max"]["USD"] == 200
    assert json.loads(sources.data_json) == sources.data
    assert len(sources.revision) == 16


def test_module_names_and_text(policy_dir: Path) -> None:
    sources = load_sources([policy_dir])
    assert sources.modules == ((str(policy_dir / "toolgate.rego"), POLICY),)


def test_data_yaml_at_root_is_merged_at_data_root(policy_dir: Path) -> None:
    _write(policy_dir / "data.yaml", "toolgate:\n  tenant_argument: org\nother: [1, 2]\n")
    sources = load_sources([policy_dir])
    assert sources.data == {"toolgate": {"tenant_argument": "org"}, "other": [1, 2]}


def test_data_json_in_subdirectory_is_mounted_under_it(policy_dir: Path) -> None:
    _write(policy_dir / "limits" / "data.json", '{"refund": {"max": 200}}')
    _write(policy_dir / "a" / "b" / "data.yml", "deep: true\n")
    sources = load_sources([policy_dir])
    assert sources.data == {"limits": {"refund": {"max": 200}}, "a": {"b": {"deep": True}}}


def test_root_and_subdirectory_data_merge_when_disjoint(policy_dir: Path) -> None:
    _write(policy_dir / "data.yaml", "toolgate:\n  tenant_argument: org\n")
    _write(policy_dir / "toolgate" / "data.json", '{"limits": {"x": {"max": 1}}}')
    sources = load_sources([policy_dir])
    assert sources.data == {"toolgate": {"tenant_argument": "org",
                                         "limits": {"x": {"max": 1}}}}


def test_conflicting_data_keys_are_a_load_error(policy_dir: Path) -> None:
    _write(policy_dir / "data.yaml", "toolgate:\n  tenant_argument: org\n")
    conflicting = _write(policy_dir / "toolgate" / "data.json", '{"tenant_argument": "x"}')
    errors = _load_errors([policy_dir]).errors
    assert len(errors) == 1
    assert errors[0].file == str(conflicting)
    assert "toolgate.tenant_argument" in errors[0].message
    assert "twice" in errors[0].message


def test_conflicting_data_across_policy_paths(tmp_path: Path, policy_dir: Path) -> None:
    _write(policy_dir / "data.yaml", "limit: 1\n")
    other = tmp_path / "more"
    second = _write(other / "data.json", '{"limit": 1}')
    errors = _load_errors([policy_dir, other]).errors
    assert [e.file for e in errors] == [str(second)]
    assert "limit" in errors[0].message


def test_data_json_and_yaml_in_one_directory_conflict(policy_dir: Path) -> None:
    _write(policy_dir / "data.json", '{"a": {"b": 1}}')
    _write(policy_dir / "data.yaml", "a:\n  b: 2\n")
    errors = _load_errors([policy_dir]).errors
    assert len(errors) == 1
    assert "a.b" in errors[0].message


def test_scalar_at_a_data_mount_point_is_a_load_error(policy_dir: Path) -> None:
    """BUG: `_merge` assumes the mount point is an object. Root data.yaml `sub: 5` plus
    `sub/data.json` crashes load_sources with `TypeError: argument of type 'int' is not
    iterable` (gateway/policy/engine.py `_merge`) instead of a LoadError naming the file,
    so `toolgate check` shows a traceback."""
    _write(policy_dir / "data.yaml", "sub: 5\n")
    nested = _write(policy_dir / "sub" / "data.json", '{"x": 1}')
    errors = _load_errors([policy_dir]).errors
    assert [e.file for e in errors] == [str(nested)]


@pytest.mark.parametrize(("name", "text"), [
    ("data.json", "[1, 2]"), ("data.yaml", "- a\n- b\n"), ("data.yaml", "just text\n"),
])
def test_data_file_must_hold_an_object(policy_dir: Path, name: str, text: str) -> None:
    bad = _write(policy_dir / name, text)
    errors = _load_errors([policy_dir]).errors
    assert [e.file for e in errors] == [str(bad)]


def test_invalid_json_data_names_file_and_line(policy_dir: Path) -> None:
    bad = _write(policy_dir / "data.json", '{\n  "a": 1,\n  "b": oops\n}\n')
    (error,) = _load_errors([policy_dir]).errors
    assert error.file == str(bad)
    assert error.line == 3
    assert str(error).startswith(f"{bad}:3: invalid data file")


def test_invalid_yaml_data_is_a_load_error(policy_dir: Path) -> None:
    bad = _write(policy_dir / "data.yaml", "a: [1, 2\nb: 3\n")
    (error,) = _load_errors([policy_dir]).errors
    assert error.file == str(bad)
    assert "invalid data file" in error.message


def test_every_error_is_reported(policy_dir: Path) -> None:
    _write(policy_dir / "x" / "data.json", "[]")
    _write(policy_dir / "y" / "data.json", "{")
    errors = _load_errors([policy_dir]).errors
    assert sorted(Path(e.file).parent.name for e in errors) == ["x", "y"]


def test_test_files_excluded_unless_asked(policy_dir: Path) -> None:
    test_file = _write(policy_dir / "toolgate_test.rego",
                       "package toolgate_test\n\nimport rego.v1\n\ntest_x if true\n")
    _write(policy_dir / "notes.md", "# not a policy\n")
    without = load_sources([policy_dir])
    assert [Path(n).name for n, _ in without.modules] == ["toolgate.rego"]
    with_tests = load_sources([policy_dir], tests=True)
    assert [Path(n).name for n, _ in with_tests.modules] == ["toolgate.rego",
                                                             "toolgate_test.rego"]
    assert str(test_file) in dict(with_tests.modules)


def test_rego_files_in_subdirectories_are_loaded(policy_dir: Path) -> None:
    extra = _write(policy_dir / "lib" / "helpers.rego", "package lib\n\nx := 1\n")
    assert str(extra) in dict(load_sources([policy_dir]).modules)


def test_single_file_path(policy_dir: Path) -> None:
    sources = load_sources([policy_dir / "toolgate.rego"])
    assert [n for n, _ in sources.modules] == [str(policy_dir / "toolgate.rego")]
    assert sources.data == {}


def test_no_rego_is_a_load_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    _write(empty / "data.yaml", "a: 1\n")
    (error,) = _load_errors([empty]).errors
    assert "no .rego policy found" in error.message
    only_tests = tmp_path / "only_tests"
    _write(only_tests / "x_test.rego", "package x_test\n")
    assert "no .rego policy found" in str(_load_errors([only_tests]))


def _revision(path: Path) -> str:
    return load_sources([path]).revision


def test_revision_is_stable(policy_dir: Path) -> None:
    assert _revision(policy_dir) == _revision(policy_dir)
    assert isinstance(load_sources([policy_dir]), PolicySources)


def test_revision_changes_when_a_policy_byte_changes(policy_dir: Path) -> None:
    before = _revision(policy_dir)
    policy = policy_dir / "toolgate.rego"
    policy.write_bytes(policy.read_bytes().replace(b'"deny"', b'"dent"'))
    assert _revision(policy_dir) != before
    policy.write_text(POLICY + " ", encoding="utf-8")
    assert _revision(policy_dir) != before
    policy.write_text(POLICY, encoding="utf-8")
    assert _revision(policy_dir) == before


def test_revision_changes_when_data_changes(policy_dir: Path) -> None:
    data = _write(policy_dir / "data.yaml", "a: 1\n")
    before = _revision(policy_dir)
    data.write_text("a: 2\n", encoding="utf-8")
    assert _revision(policy_dir) != before


def test_revision_changes_when_a_policy_is_added(policy_dir: Path) -> None:
    before = _revision(policy_dir)
    _write(policy_dir / "extra.rego", "package extra\n")
    assert _revision(policy_dir) != before
