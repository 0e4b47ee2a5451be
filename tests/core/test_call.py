"""The call's trace id: a W3C `traceparent` (version 00) when valid, else a new one."""

from __future__ import annotations

import re

import pytest

from gateway.core.call import Entrance, RequestFacts, TraceParent, new_trace_id, trace_id

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def test_a_valid_traceparent_is_parsed() -> None:
    assert TraceParent.parse(VALID) == TraceParent(TRACE, PARENT, 1)
    assert TraceParent.parse(f"00-{TRACE}-{PARENT}-00") == TraceParent(TRACE, PARENT, 0)
    assert TraceParent.parse(f"00-{TRACE}-{PARENT}-ff") == TraceParent(TRACE, PARENT, 255)
    assert trace_id(VALID) == TRACE


def test_one_header_given_as_a_list_counts_as_that_header() -> None:
    assert TraceParent.parse([VALID]) == TraceParent(TRACE, PARENT, 1)


@pytest.mark.parametrize("header", [
    None, "", "junk", f"00-{TRACE}", f"00-{TRACE}-{PARENT}",
    # uppercase hex, in any field
    f"00-{TRACE.upper()}-{PARENT}-01", f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{TRACE}-{PARENT}-0A",
    # wrong lengths
    f"00-{TRACE[:-1]}-{PARENT}-01", f"00-{TRACE}0-{PARENT}-01", f"00-{TRACE}-{PARENT}0-01",
    f"00-{TRACE}-{PARENT}-1", f"0-{TRACE}-{PARENT}-01",
    # all-zero trace id or parent id
    f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",
    # other versions, including the invalid ff and a future version with more fields
    f"01-{TRACE}-{PARENT}-01", f"ff-{TRACE}-{PARENT}-01", f"cc-{TRACE}-{PARENT}-01-what",
    # anything after it, before it, or another separator
    f"{VALID}-extra", f"{VALID}\n", f"{VALID}\nx", f" {VALID}", f"{VALID} ",
    VALID.replace("-", "_"), f"00-{TRACE[:-1]}g-{PARENT}-01",
    # sent twice: two parents cannot both be this call's parent
    [VALID, VALID], [],
], ids=repr)
def test_anything_else_is_ignored(header: str | list[str] | None) -> None:
    assert TraceParent.parse(header) is None
    made = trace_id(header)
    assert HEX32.fullmatch(made) and made != "0" * 32
    assert made != TRACE


def test_new_trace_ids_are_random_and_valid() -> None:
    ids = {new_trace_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(HEX32.fullmatch(i) and i != "0" * 32 for i in ids)


def test_request_facts_always_have_a_trace_id() -> None:
    """A request refused before the entrance read any header (the HTTP parser's) still
    gets a trace id of its own."""
    def facts() -> RequestFacts:
        return RequestFacts(request_id="r", entrance=Entrance.REST, method="", path="",
                            source_ip="", scheme="http", received_at=0.0, started=0.0)
    one, two = facts(), facts()
    assert HEX32.fullmatch(one.trace_id) and one.trace_id != two.trace_id
    assert one.trace is None
