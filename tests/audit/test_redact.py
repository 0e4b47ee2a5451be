"""Redaction of argument values by JSON pointer, wildcards included; the mask and the
keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from gateway.audit.redact import MASK, REDACTED, Redactor, outline, redact
from gateway.audit.settings import AuditKeyError, AuditSettings, Redaction

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
TOKEN = re.compile(r"^hmac:[0-9a-f]{32}$")


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


# ---- the keyed hash ------------------------------------------------------------------------


def test_the_mask_is_the_default() -> None:
    assert Redactor().mode is Redaction.MASK
    assert MASK.token({"any": "value"}) == REDACTED
    assert MASK.apply({"a": 1, "b": 2}, ["/a"]) == ({"a": REDACTED, "b": 2}, ["/a"])


def test_hash_tokens_are_hmac_sha256_of_canonical_json() -> None:
    redactor = Redactor(KEY)
    assert redactor.mode is Redaction.HASH
    expected = hmac.new(KEY, b'{"a":1,"b":[2,"x"]}', hashlib.sha256).hexdigest()[:32]
    assert redactor.token({"b": [2, "x"], "a": 1}) == f"hmac:{expected}"
    assert TOKEN.match(redactor.token("ann@example.com"))


def test_equal_values_give_equal_tokens_and_different_ones_differ() -> None:
    """Across records and restarts (a new redactor with the same key): the same value, the
    same token — so an auditor can correlate without seeing the value."""
    first, restarted = Redactor(KEY), Redactor(bytes(KEY))
    assert first.token("ann@example.com") == restarted.token("ann@example.com")
    assert first.token({"x": 1, "y": 2}) == restarted.token({"y": 2, "x": 1})
    assert first.token("ann@example.com") != first.token("bob@example.com")
    assert first.token(1) != first.token("1") != first.token([1])
    assert first.token("ann@example.com") != Redactor(OTHER_KEY).token("ann@example.com")


def test_values_json_cannot_carry_hash_consistently() -> None:
    """An integer past 64 bits (which orjson cannot write) still hashes, always alike."""
    redactor = Redactor(KEY)
    assert TOKEN.match(redactor.token(10**30))
    assert redactor.token(10**30) == redactor.token(10**30) != redactor.token(10**30 + 1)


def test_hash_redaction_at_nested_and_wildcard_pointers() -> None:
    redactor = Redactor(KEY)
    args = {"contact": {"email": "ann@example.com", "name": "Ann"},
            "items": [{"card": "4111", "sku": "a"}, {"card": "4111", "sku": "b"},
                      {"card": "5500", "sku": "c"}],
            "by_name": {"x": {"ssn": "1"}, "y": {"ssn": "2"}}}
    out, replaced = redactor.apply(args, ["/contact/email", "/items/*/card", "/by_name/*/ssn"])
    assert out["contact"] == {"email": redactor.token("ann@example.com"), "name": "Ann"}
    cards = [item["card"] for item in out["items"]]
    assert cards[0] == cards[1] == redactor.token("4111") != cards[2]
    assert [item["sku"] for item in out["items"]] == ["a", "b", "c"]
    assert out["by_name"] == {"x": {"ssn": redactor.token("1")}, "y": {"ssn": redactor.token("2")}}
    assert replaced == ["/by_name/x/ssn", "/by_name/y/ssn", "/contact/email", "/items/0/card",
                        "/items/1/card", "/items/2/card"]
    assert args["items"][0]["card"] == "4111", "the arguments themselves are never changed"


def test_objects_and_arrays_are_hashed_whole_whatever_the_pointer_order() -> None:
    redactor = Redactor(KEY)
    args = {"card": {"number": "4111", "cvc": "123"}, "tags": ["a", "b"]}
    for pointers in (["/card", "/card/number", "/tags"], ["/card/number", "/tags", "/card"]):
        out, replaced = redactor.apply(args, pointers)
        assert out == {"card": redactor.token({"cvc": "123", "number": "4111"}),
                       "tags": redactor.token(["a", "b"])}
        assert replaced == ["/card", "/tags"]


def test_the_empty_pointer_is_the_whole_document() -> None:
    assert Redactor(KEY).apply({"a": 1}, [""]) == (Redactor(KEY).token({"a": 1}), [""])
    assert MASK.redact({"a": 1}, ["/a", ""]) == REDACTED


def test_replaced_pointers_are_escaped() -> None:
    _, replaced = MASK.apply({"a/b": 1, "c~d": {"e": 2}}, ["/a~1b", "/c~0d/e", "/nope"])
    assert replaced == ["/a~1b", "/c~0d/e"]


def test_the_redactor_comes_from_the_audit_settings(tmp_path: Path) -> None:
    assert Redactor.from_settings(AuditSettings(), {}).mode is Redaction.MASK
    hashed = Redactor.from_settings(
        AuditSettings(redaction=Redaction.HASH, redaction_key_env="RK"), {"RK": KEY.decode()})
    assert hashed.token("x") == Redactor(KEY).token("x")
    key_file = tmp_path / "redaction.key"
    key_file.write_bytes(KEY + b"\n")
    from_file = Redactor.from_settings(
        AuditSettings(redaction=Redaction.HASH, redaction_key_file=key_file), {})
    assert from_file.token("x") == hashed.token("x")
    with pytest.raises(AuditKeyError, match="RK is not set"):
        Redactor.from_settings(AuditSettings(redaction=Redaction.HASH,
                                             redaction_key_env="RK"), {})
    with pytest.raises(AuditKeyError, match="at least 32"):
        Redactor.from_settings(AuditSettings(redaction=Redaction.HASH,
                                             redaction_key_env="RK"), {"RK": "short"})


# ---- outline -------------------------------------------------------------------------------


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
