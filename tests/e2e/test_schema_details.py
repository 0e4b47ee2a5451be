"""Schema rejections carry `details` an agent can act on: a JSON pointer and a message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import Gateway, Upstream


@pytest.mark.parametrize(("body", "path", "keyword"), [
    ({"count": 1}, "/name", "required"),
    ({"name": "a", "count": "one"}, "/count", "type"),
    ({"name": "a", "count": 1, "colour": "red"}, "/colour", "additionalProperties"),
    ({"name": "a", "count": 1, "when": "yesterday"}, "/when", "format"),
    ({"name": "a", "count": 1, "contact": "not-an-email"}, "/contact", "format"),
    ({"name": "", "count": -1}, "/count", "minimum"),
])
def test_detail_names_the_failing_argument(gateway: Gateway, upstream: Upstream, token: str,
                                           body: dict[str, Any], path: str,
                                           keyword: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("POST", "/echo/items", token=token, body=body)
    assert reply.status == 422
    error = reply.json["error"]
    assert error["code"] == "schema_invalid"
    matching = [d for d in error["details"] if d["path"] == path]
    assert matching, error["details"]
    assert matching[0]["keyword"] == keyword
    assert matching[0]["message"]
    assert len(upstream.seen) == before
    [decision] = gateway.records_for(reply.request_id)
    assert decision["stage"] == "validate"


def test_valid_formats_pass(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/echo/items", token=token,
                         body={"name": "a", "count": 1, "when": "2026-11-24T10:00:00Z",
                               "contact": "ada@example.com"})
    assert reply.status == 200


def test_all_failures_are_reported_together(gateway: Gateway, token: str) -> None:
    reply = gateway.call("POST", "/echo/items", token=token,
                         body={"count": "x", "extra": True})
    paths = {d["path"] for d in reply.json["error"]["details"]}
    assert {"/name", "/count", "/extra"} <= paths
