"""`toolgate approvals show`: the held call in full — everything that will be sent, with
the agent's text escaped so it cannot pose as something else on a terminal."""

from __future__ import annotations

from gateway.cli.approvals import details
from tests.approvals.test_rules import held


def shown(body: str, headers: dict[str, str]) -> str:
    view = held().public("Authorization")
    view["call"] = {**view["call"], "body": body, "headers": headers}
    return details(view)


def test_every_part_of_the_call_is_shown() -> None:
    text = shown('{"amount": 250}', {"Content-Type": "application/json",
                                     "X-Request-Id": "req_1"})
    assert "call         POST /v1/refunds to upstream billing" in text
    assert "  Content-Type: application/json" in text
    assert "  X-Request-Id: req_1" in text
    assert "  Authorization: (the upstream credential, added by the gateway)" in text
    assert 'body: "{\\"amount\\": 250}"' in text


def test_the_agent_s_text_cannot_break_lines_or_turn_around() -> None:
    text = shown('{"note": "ok\u2028amount: 1\u202e"}', {"Accept-Language": "de\u2029x"})
    body_lines = [ln for ln in text.splitlines() if "body:" in ln]
    assert len(body_lines) == 1
    assert "\\u2028" in body_lines[0]
    assert "\\u202e" in body_lines[0]
    assert "\u2029" not in text and "\u2028" not in text and "\u202e" not in text
