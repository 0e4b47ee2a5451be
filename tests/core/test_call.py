"""The trace id of a W3C traceparent header."""

from __future__ import annotations

import pytest

from gateway.core.call import trace_id


def test_trace_id_from_valid_traceparent() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id(header) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("header", [
    None, "", "junk", "00-4bf92f3577b34da6a3ce929d0e0e4736",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx",
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
], ids=repr)
def test_trace_id_junk_is_none(header: str | None) -> None:
    assert trace_id(header) is None
