"""Redaction of argument values by JSON pointer, wildcards included."""

from __future__ import annotations

import json

import pytest

from gateway.audit.redact import REDACTED, outline, redact


def test_redact_top_level_and_nested() -> None:
    args = {"order_id": "o-1", "card": {"number": "4111", "exp": "12/30"}, "ssn": "123"}
    out = redact(args, ["/ssn", "/card/number"])
    assert out == {"order_id": "o-1", "card": {"number": REDACTED, "exp": "12/30"},
                   "ssn": REDACTED}


def test_redact_escaped_names() -> None:
    args = {"a/b": "slash", "c~d": "tilde", "e~1f": "literal", "keep": 1}
    out = redact(args, ["/a~1b", "/c~0d", "/e~01f"])
    assert out == {"a/b": REDACTED, "c~d": REDACTED, "e~1f": REDACTED, "keep": 1}


def test_redact_leaves_input_unmodified() -> None:
    args = {"card": {"number": "4111"}, "ssn": "123"}
    snapshot = json.loads(json.dumps(args))
    out = redact(args, ["/card/number", "/ssn"])
    assert args == snapshot
    assert out is not args
    assert out["card"] is not args["card"]


def test_redact_ignores_missing_pointers() -> None:
    args = {"card": {"number": "4111"}, "list": [1, 2], "s": "x"}
    out = redact(args, ["/nope", "/card/nope", "/nope/deeper", "/s/x", "/card/number/x"])
    assert out == args


def test_redact_without_pointers_returns_args() -> None:
    args = {"a": 1}
    assert redact(args, []) == {"a": 1}
    assert redact(None, ["/a"]) is None


def test_redact_redacts_whole_subtrees() -> None:
    out = redact({"card": {"number": "4111", "cvc": "123"}}, ["/card"])
    assert out == {"card": REDACTED}


def test_redact_array_elements() -> None:
    """JSON pointers index arrays (RFC 6901 §4): `/cards/0/number` is the first card's."""
    args = {"cards": [{"number": "4111"}, {"number": "5500"}], "tags": ["a", "secret"]}
    out = redact(args, ["/cards/0/number", "/tags/1", "/tags/2", "/cards/-/number"])
    assert out == {"cards": [{"number": REDACTED}, {"number": "5500"}],
                   "tags": ["a", REDACTED]}


def test_redact_wildcard_segment() -> None:
    args = {"items": [{"card": "4111", "sku": "a"}, {"card": "5500", "sku": "b"}],
            "by_name": {"x": {"ssn": "1"}, "y": {"ssn": "2"}}, "empty": []}
    out = redact(args, ["/items/*/card", "/by_name/*/ssn", "/empty/*/x"])
    assert out == {"items": [{"card": REDACTED, "sku": "a"}, {"card": REDACTED, "sku": "b"}],
                   "by_name": {"x": {"ssn": REDACTED}, "y": {"ssn": REDACTED}}, "empty": []}
    assert args["items"][0]["card"] == "4111"


@pytest.mark.parametrize("pointer", ["/a/\u00b2", "/a/\u0663", "/a/1x", "/a/-1", "/a/",
                                     "/a/*/*/*", "/*", "/~2", "/a/~"])
def test_redact_never_raises_on_an_accepted_pointer(pointer: str) -> None:
    """BUG (fixed): `_redact` tests list indices with `str.isdigit()`, which is
    true for "²" (U+00B2), and then `int("²")` raises ValueError. The pointer passes
    PolicyDecision.parse, so a policy's `redact` list can crash the decision record."""
    args = {"a": [1, 2, 3, 4]}
    out = redact(args, [pointer])
    assert isinstance(out, dict)
    assert args == {"a": [1, 2, 3, 4]}


# ---- trace_id ------------------------------------------------------------------------------


def test_an_outline_keeps_declared_names_types_and_sizes_only() -> None:
    args = {"amount": 12.5, "order_id": "ord_1", "note": None, "flag": True,
            "items": [1, 2], "card": {"n": "4111"}, "x" * 5000: "y" * 100_000,
            "big": 10**30}
    out = outline(args, {"amount", "order_id", "note", "flag", "items", "card", "big",
                         "currency"})
    assert out == {"declared": {"amount": {"type": "number", "bytes": 4},
                                "big": {"type": "number", "bytes": 31},
                                "card": {"type": "object", "bytes": 12},
                                "flag": {"type": "boolean", "bytes": 4},
                                "items": {"type": "array", "bytes": 5},
                                "note": {"type": "null", "bytes": 4},
                                "order_id": {"type": "string", "bytes": 7}},
                   "undeclared": 1}
    assert "4111" not in json.dumps(out) and "ord_1" not in json.dumps(out)
