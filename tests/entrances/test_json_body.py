"""JSON with one meaning: what parsers disagree on is refused, before anyone judges it."""

from __future__ import annotations

import pytest

from gateway.core.errors import InvalidJson
from gateway.entrances.json_body import MAX_DEPTH, arguments, loads_strict


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"a": 1, "a": 2}',
    b'{"a": {"b": 1, "b": 1}}', b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}',
    b'{"a": 100000000000000000000000}', b'{"a": "\\ud800"}',
    b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}",
])
def test_ambiguous_or_unwritable_json_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidJson):
        arguments(body)


@pytest.mark.parametrize("body", [
    '{"amount": 250}'.encode("utf-16"), '{"amount": 250}'.encode("utf-16-le"),
    '{"amount": 250}'.encode("utf-32"), b'\xef\xbb\xbf{"amount": 250}',
    b'{"amount": "\xff"}',
])
def test_only_utf8_without_a_byte_order_mark_is_json(body: bytes) -> None:
    """Python's parser reads UTF-16 and UTF-32 too: the gateway would judge a meaning an
    approver is shown as garbage, and that an upstream may read another way."""
    with pytest.raises(InvalidJson):
        arguments(body)


def test_an_empty_body_is_no_arguments() -> None:
    assert arguments(b"") == {}
    assert arguments(b"  \n") == {}


def test_an_object_is_its_arguments() -> None:
    assert arguments(b'{"amount": 1.5, "nested": {"x": [1, 2]}}') == {
        "amount": 1.5, "nested": {"x": [1, 2]}}


def test_arguments_nest_at_most_max_depth() -> None:
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert arguments(f'{{"a": {deep}}}'.encode())["a"] == loads_strict(deep)
    deeper = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    with pytest.raises(InvalidJson, match="deeper than 64"):
        arguments(f'{{"a": {deeper}}}'.encode())
