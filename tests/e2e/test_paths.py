"""Path tricks never reach an upstream path that no tool spec declares.

The upstream records every raw path it receives; after all the tricks, every one of them
must be a path some spec's `forward.path` can produce with a single-segment parameter.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import Gateway, Upstream

TRICKS = [
    "/billing/../admin",
    "/billing/refunds/../../admin/users",
    "/echo/items/..",
    "/echo/items/.",
    "/echo/items/%2e%2e",
    "/echo/items/%2E%2E",
    "/echo/items/%2e",
    "/echo/items/..%2Fadmin",
    "/echo/items/a%2Fb",
    "/echo/items/a%5Cb",
    "/echo/items/a%00b",
    "/echo/items/%ff",
    "/echo/items//x",
    "//echo/items/x",
    "/echo//items/x",
    "/echo/items/x/",
    "/echo/items/x/y",
    "/echo%2Fitems/x",
    "/%65cho/items/x",
    "/echo/items/x/../../../v1/admin",
    "/echo/./items/x",
]
DECLARED = re.compile(r"^/v1/(items/[^/]+|items|status/[^/]+|slow|slow/refunds|slow/notes|"
                      r"slow/keyed|anything|shadow|refunds|customers/[^/]+|orders/[^/]+|"
                      r"tickets/[^/]+/notes|employees/[^/]+/bank-account)(\?.*)?$"
                      r"|^/hooks/approvals$")  # the approval tests' webhook receiver


@pytest.mark.parametrize("path", TRICKS)
def test_trick_is_refused(gateway: Gateway, upstream: Upstream, token: str, path: str) -> None:
    before = len(upstream.seen)
    reply = gateway.call("GET", path, token=token)
    assert reply.status in (400, 403, 404), (path, reply.status, reply.raw)
    if reply.status != 404:  # 404 is aiohttp refusing a target it cannot parse at all
        assert reply.code in ("tool_not_allowed", "invalid_arguments")
    assert len(upstream.seen) == before, upstream.seen[before:]


def test_encoded_parameter_reaches_upstream_as_one_segment(
        gateway: Gateway, upstream: Upstream, token: str) -> None:
    reply = gateway.call("GET", "/echo/items/a%20b%3Fc", token=token)
    assert reply.status == 200
    assert upstream.seen[-1].raw_path == "/v1/items/a%20b%3Fc"


def test_upstream_only_ever_saw_declared_paths(gateway: Gateway, upstream: Upstream,
                                               token: str) -> None:
    for path in TRICKS:
        gateway.call("GET", path, token=token)
    bad = [p for p in upstream.paths() if not DECLARED.match(p)]
    assert not bad, bad
