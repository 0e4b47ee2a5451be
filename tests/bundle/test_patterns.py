"""JSON Schema patterns are ECMA-262 regular expressions, not Python's `re`."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bundle.schemas import compile_schema


def valid(schema: dict[str, Any], instance: Any) -> bool:
    return bool(compile_schema(schema).is_valid(instance))


@pytest.mark.parametrize("text", ["C1\n", "C1\r\n", "\nC1", "C\u0661"])
def test_an_anchored_pattern_means_what_it_says(text: str) -> None:
    """Python's `$` matches before a final newline, and its `[0-9]`-like classes differ
    in places: `^C[0-9]+$` accepted "C1\\n"."""
    schema = {"type": "string", "pattern": "^C[0-9]+$"}
    assert valid(schema, "C12")
    assert not valid(schema, text)


def test_pattern_properties_and_additional_properties_use_the_same_engine() -> None:
    schema = {"type": "object", "patternProperties": {"^x-[a-z]+$": {"type": "string"}},
              "additionalProperties": False}
    assert valid(schema, {"x-trace": "a"})
    assert not valid(schema, {"x-trace\n": "a"}), "not a pattern property, so additional"
    assert not valid(schema, {"x-trace": 1})


def test_ecma_only_syntax_works_and_python_only_syntax_is_a_load_error() -> None:
    assert valid({"type": "string", "pattern": r"^\p{L}+$"}, "héllo")
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        compile_schema({"type": "string", "pattern": "(?P<name>a)"})
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        compile_schema({"type": "object", "patternProperties": {"(?i)x": {}}})


def test_the_regex_format_is_ecma_262() -> None:
    schema = {"type": "string", "format": "regex"}
    assert valid(schema, r"^\p{L}$")
    assert not valid(schema, "(?P<name>a)")


@pytest.mark.parametrize(("address", "ok"), [
    ("ada@example.com", True), ("a.b+tag@sub.example.org", True), ("a@b", False),
    ("x@@y.com", False), ("a b@c.com", False), ("@c.com", False), ("ada@example.com\n", False),
    ("ädä@example.com", False),
])
def test_email_is_an_address_not_a_string_with_an_at(address: str, ok: bool) -> None:
    assert valid({"type": "string", "format": "email"}, address) is ok


def test_idn_email_allows_international_addresses() -> None:
    assert valid({"type": "string", "format": "idn-email"}, "ädä@exämple.com")


def test_unevaluated_properties_with_pattern_properties_is_refused() -> None:
    with pytest.raises(ValueError, match="unevaluatedProperties"):
        compile_schema({"type": "object", "patternProperties": {"^a": {}},
                        "unevaluatedProperties": False})
