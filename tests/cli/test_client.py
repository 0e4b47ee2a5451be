"""What the CLI makes of the admin API's error answers (`gateway.cli.client.ApiError`)."""

from __future__ import annotations

import pytest

from gateway.cli.client import ApiError


@pytest.mark.parametrize(("status", "code", "refused"), [
    (403, "self_approval", True),
    (409, "approval_not_pending", True),
    # The gateway turned the request away before reading it (draining, or full).
    (503, "over_capacity", True),
    # Another 5xx may come after the change was made: not known, so not "refused".
    (503, "store_unavailable", False),
    (503, "audit_unavailable", False),
    (500, "internal_error", False),
    (502, "502", False),
])
def test_only_an_answer_that_changed_nothing_is_a_refusal(status: int, code: str,
                                                          refused: bool) -> None:
    error = ApiError(status, {"error": {"code": code, "message": "m"}})
    assert error.code == code
    assert error.refused is refused


def test_a_body_that_is_not_the_gateways_error_is_named_by_its_status() -> None:
    error = ApiError(503, "Service Unavailable")
    assert error.code == "503"
    assert not error.refused
