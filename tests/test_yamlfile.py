"""`gateway.yamlfile`: YAML values that remember their lines, and errors that say `file:line`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import yamlfile
from gateway.core.errors import LoadError

# ---------------------------------------------------------------------------------- loading


def test_values_and_lines_of_every_path() -> None:
    doc = yamlfile.loads(
        "# a comment\n"
        "name: x\n"
        "route:\n"
        "  method: GET\n"
        "  path: /a\n"
        "scopes:\n"
        "  - one\n"
        "  - two\n",
        "spec.yaml",
    )
    assert doc.value == {"name": "x", "route": {"method": "GET", "path": "/a"},
                         "scopes": ["one", "two"]}
    assert doc.file == "spec.yaml"
    assert doc.line(("name",)) == 2
    assert doc.line(("route",)) == 3
    assert doc.line(("route", "path")) == 5
    assert doc.line(("scopes", 1)) == 8


def test_line_falls_back_to_the_nearest_ancestor() -> None:
    doc = yamlfile.loads("a: 1\nroute:\n  method: GET\n", "f.yaml")
    assert doc.line(("route", "missing", "deeper")) == 2
    assert doc.line(("nothing", "here")) == doc.line(())


def test_error_carries_file_and_line() -> None:
    doc = yamlfile.loads("a: 1\nb:\n  c: 2\n", "conf.yaml")
    err = doc.error(("b", "c"), "bad c")
    assert (err.file, err.line, err.message) == ("conf.yaml", 3, "bad c")
    assert str(err) == "conf.yaml:3: bad c"


def test_scalars_keep_their_yaml_types() -> None:
    doc = yamlfile.loads("i: 250\nf: 1.5\nb: true\nn: null\ns: '250'\n", "f.yaml")
    assert doc.value == {"i": 250, "f": 1.5, "b": True, "n": None, "s": "250"}
    assert isinstance(doc.value["i"], int)


def test_an_empty_document_is_none() -> None:
    doc = yamlfile.loads("", "empty.yaml")
    assert doc.value is None
    assert doc.line(("x",)) is None


def test_alias_is_expanded_to_a_plain_value() -> None:
    doc = yamlfile.loads("a: &anchor {k: 1}\nb: *anchor\n", "f.yaml")
    assert doc.value == {"a": {"k": 1}, "b": {"k": 1}}
    assert doc.line(("b",)) == 2


def test_load_reads_a_file(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("a:\n  b: [1, 2]\n", encoding="utf-8")
    doc = yamlfile.load(f)
    assert doc.value == {"a": {"b": [1, 2]}}
    assert doc.file == str(f)
    assert doc.line(("a", "b")) == 2


def test_load_of_a_missing_file_is_a_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(LoadError) as info:
        yamlfile.load(missing)
    assert info.value.file == str(missing)
    assert "cannot read" in str(info.value)


# ----------------------------------------------------------------------------------- errors


def test_syntax_error_reports_its_line() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("a: 1\nb: [1, 2\nc: 3\n", "broken.yaml")
    assert info.value.file == "broken.yaml"
    assert info.value.line is not None
    assert info.value.line >= 2
    assert str(info.value).startswith(f"broken.yaml:{info.value.line}: invalid YAML")


def test_syntax_error_line_is_the_bad_line() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("a: 1\nb: 2\n  c: 3\n", "broken.yaml")
    assert info.value.line == 3


def test_duplicate_key_is_rejected_with_the_line_of_the_second() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n", "dup.yaml")
    assert info.value.line == 5
    assert "duplicate key 'c'" in str(info.value)
    assert str(info.value).startswith("dup.yaml:5:")


def test_duplicate_top_level_key_is_rejected() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("name: a\nupstream: crm\nname: b\n", "dup.yaml")
    assert info.value.line == 3
    assert "'name'" in info.value.message


def test_non_string_key_is_rejected() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("ok: 1\n200: x\n", "f.yaml")
    assert info.value.line == 2
    assert "not a string" in info.value.message


def test_complex_key_is_rejected() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("? [1, 2]\n: x\n", "f.yaml")
    assert info.value.line == 1


def test_unsafe_python_tag_on_a_scalar_is_a_load_error() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("a: 1\nb: !!python/name:os.system\n", "f.yaml")
    assert info.value.line == 2


def test_merge_key_is_a_load_error_not_silently_ignored() -> None:
    with pytest.raises(LoadError) as info:
        yamlfile.loads("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "f.yaml")
    assert info.value.line == 3


def test_recursive_alias_is_a_load_error() -> None:
    # A self-referencing alias must be reported like any other bad input (file:line), not
    # crash the loader with a RecursionError and a traceback.
    with pytest.raises(LoadError) as info:
        yamlfile.loads("a: &x [*x]\n", "loop.yaml")
    assert info.value.file == "loop.yaml"


def laughs(levels: int, fan_out: int = 10) -> str:
    """The "billion laughs": each anchor is a list of `fan_out` aliases of the one before,
    so a few hundred bytes name fan_out ** levels values."""
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan_out)}]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("levels", "fan_out"), [(6, 10), (2, 320)])
def test_alias_expansion_is_capped(levels: int, fan_out: int) -> None:
    """A million values from 300 bytes, or 102,400 from a few kilobytes: a load error once
    MAX_NODES values are built, not memory and minutes (a billion laughs is the same
    document with 9 levels; without the cap it would exhaust the machine, so it is not
    run here)."""
    text = laughs(levels, fan_out)
    assert len(text) < 5000
    with pytest.raises(LoadError) as info:
        yamlfile.loads(text, "laughs.yaml")
    assert info.value.file == "laughs.yaml"
    assert info.value.line is not None
    assert f"more than {yamlfile.MAX_NODES} values" in info.value.message


def test_aliases_below_the_cap_still_expand() -> None:
    # 90,000 leaves, 90,604 values in all: just under the cap, so it loads.
    doc = yamlfile.loads(laughs(2, 300), "laughs.yaml")
    assert len(doc.value["l2"]) == 300
    assert doc.value["l2"][299][299] == "lol"


# ----------------------------------------------------------------------------- schema_errors

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "inner": {"type": "object", "additionalProperties": False,
                  "properties": {"n": {"type": "integer"}}},
    },
}


def test_schema_errors_is_empty_for_a_valid_value() -> None:
    doc = yamlfile.loads("name: a\ninner:\n  n: 1\n", "f.yaml")
    assert yamlfile.schema_errors(doc, doc.value, SCHEMA) == []


def test_schema_error_carries_the_line_of_the_bad_value() -> None:
    doc = yamlfile.loads("name: a\ninner:\n  n: not-a-number\n", "f.yaml")
    errors = yamlfile.schema_errors(doc, doc.value, SCHEMA)
    assert len(errors) == 1
    assert errors[0].line == 3
    assert errors[0].message.startswith("inner.n: ")
    assert "integer" in errors[0].message


def test_schema_errors_are_all_reported() -> None:
    doc = yamlfile.loads("name: 5\ninner:\n  n: x\n", "f.yaml")
    errors = yamlfile.schema_errors(doc, doc.value, SCHEMA)
    assert sorted(e.line for e in errors if e.line) == [1, 3]


def test_schema_error_names_the_unknown_key() -> None:
    doc = yamlfile.loads("name: a\ninner:\n  n: 1\n  extra: 2\n", "f.yaml")
    errors = yamlfile.schema_errors(doc, doc.value, SCHEMA)
    assert len(errors) == 1
    assert "unknown key 'extra'" in errors[0].message


def test_schema_error_for_an_unknown_key_points_at_that_key() -> None:
    doc = yamlfile.loads("name: a\ninner:\n  n: 1\n  extra: 2\n", "f.yaml")
    (err,) = yamlfile.schema_errors(doc, doc.value, SCHEMA)
    assert err.line == 4


def test_schema_errors_with_a_base_path_inside_a_list() -> None:
    doc = yamlfile.loads("- name: a\n- name: b\n  inner: {n: x}\n", "list.yaml")
    errors = yamlfile.schema_errors(doc, doc.value[1], SCHEMA, base=(1,))
    assert len(errors) == 1
    assert errors[0].line == 3
    assert errors[0].message.startswith("1.inner.n: ")
