"""Redaction of argument values by JSON pointer, wildcards included."""

from __future__ import annotations

import json

import pytest

from gateway.audit.redact import REDACTED, redact


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
