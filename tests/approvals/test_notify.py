"""The approval webhook's payload: Slack-compatible, without the arguments by default."""

from __future__ import annotations

from gateway.approvals.notify import payload
from tests.approvals.test_rules import held


def test_payload_leaves_arguments_out_by_default() -> None:
    body = payload("pending", held(), include_args=False)
    assert "args" not in body["toolgate"]
    assert "a@b.c" not in str(body)
    assert "create_refund_request" in body["text"]
    assert "toolgate approvals approve apr_1" in body["text"]
    assert payload("pending", held(), include_args=True)["toolgate"]["args"]["amount"] == 250
