"""The answers that need no upstream: errors, retries of held calls, replays, reports."""

from __future__ import annotations

import json

import pytest

from gateway.act.answers import error_reply, from_held, replay, shadow
from gateway.approvals.model import ApprovalStatus
from gateway.core.decision import Act, Action, Verdict
from gateway.core.errors import Unauthenticated
from gateway.core.stage import Stage
from gateway.state.idempotency import KeyState, KeyStatus, Scope
from tests.approvals.test_rules import NOW, held


def test_an_error_is_the_json_envelope_with_its_headers() -> None:
    reply = error_reply(Unauthenticated("token expired", headers={"WWW-Authenticate": "B"}),
                        "req_1")
    assert (reply.status, reply.decision, reply.headers["WWW-Authenticate"]) == (401, "deny",
                                                                                "B")
    assert json.loads(reply.body) == {"error": {"code": "unauthenticated",
                                                "message": "token expired",
                                                "request_id": "req_1"}}


def test_a_replay_is_the_stored_answer_marked_as_such() -> None:
    state = KeyState(Scope("acme", "t", "k"), "fp", "req_0", KeyStatus.DONE, 0.0, 503,
                     "text/plain", b"down")
    reply = replay(state)
    assert (reply.status, reply.body, reply.content_type, reply.decision) == (
        503, b"down", "text/plain", "allow")
    assert reply.headers["Idempotent-Replayed"] == "true"


def test_a_shadow_report() -> None:
    verdict = Verdict(Action.REQUIRE_APPROVAL, Act.SHADOW, Stage.POLICY, ("over_limit: x",))
    reply = shadow(verdict)
    assert (reply.status, reply.decision) == (200, "shadow")
    assert json.loads(reply.body) == {"status": "shadow", "action": "require_approval",
                                      "reasons": ["over_limit: x"]}


def test_a_waiting_call_is_202_with_where_to_poll() -> None:
    reply = from_held(held(), "req_2", NOW)
    body = json.loads(reply.body)
    assert (reply.status, body["status"], body["poll"]) == (202, "pending_approval",
                                                            "/v1/approvals/apr_1")


@pytest.mark.parametrize(("changes", "status", "code"), [
    ({"status": ApprovalStatus.REJECTED, "reason": "no"}, 403, "policy_denied"),
    ({"expires_at": NOW}, 403, "policy_denied"),
    ({"status": ApprovalStatus.FAILED, "error": "upstream_timeout", "reason": "t"}, 502,
     "upstream_error"),
    ({"status": ApprovalStatus.OUTCOME_UNKNOWN}, 502, "outcome_unknown"),
])
def test_a_decided_call_answers_as_the_call_would(changes: dict[str, object], status: int,
                                                  code: str) -> None:
    reply = from_held(held(**changes), "req_3", NOW)
    assert (reply.status, json.loads(reply.body)["error"]["code"]) == (status, code)
    assert reply.decision == "require_approval"


@pytest.mark.parametrize(("error", "status", "code"), [
    ("killed", 403, "killed"), ("budget_exceeded", 429, "budget_exceeded"),
    ("upstream_error", 502, "upstream_error"), ("tool_not_allowed", 403, "tool_not_allowed"),
    ("internal_error", 500, "internal_error"), (None, 500, "internal_error")])
def test_a_call_not_sent_answers_with_its_refusal_and_says_so(
        error: str | None, status: int, code: str) -> None:
    """The refusal's own code, as the call itself would have got; `sent: false` and the
    approval's status say it did not run."""
    reply = from_held(held(status=ApprovalStatus.NOT_SENT, error=error,
                           reason="not sent: stopped"), "req_5", NOW)
    body = json.loads(reply.body)["error"]
    assert (reply.status, body["code"]) == (status, code)
    assert (body["sent"], body["approval_status"], body["approval_id"]) == (
        False, "not_sent", "apr_1")
    assert body["message"] == "the approved call was not sent: stopped"


def test_an_executed_call_answers_with_its_result() -> None:
    done = held(status=ApprovalStatus.EXECUTED, result_status=201, result_body=b'{"id":1}',
                result_content_type="application/json")
    reply = from_held(done, "req_4", NOW)
    assert (reply.status, reply.body, reply.headers["Idempotent-Replayed"]) == (
        201, b'{"id":1}', "true")
