"""The pure decision core: `PolicyDecision.parse` (the one place Rego output is read) and
`decide` (facts -> verdict). No event loop, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.decision import Act, Action, PolicyDecision, Verdict, decide
from gateway.core.errors import (
    IdempotencyKeyRequired,
    InsufficientScope,
    PolicyDenied,
    PolicyUnavailable,
    ReasonCode,
    Unauthenticated,
)
from gateway.core.stage import Stage

ALLOW = {"action": "allow", "reasons": ["green_tier: ok"]}


def _with(**fields: Any) -> dict[str, Any]:
    return {**ALLOW, **fields}


def _assert_policy_error(decision: PolicyDecision) -> None:
    assert decision.action is Action.DENY
    # The code first, then a detail saying what was wrong (for the audit record).
    assert decision.reasons[0] == "policy_error"
    assert len(decision.reasons) == 2
    assert decision.reasons[1]


# ---- PolicyDecision.parse: malformed shapes ----------------------------------------------

@pytest.mark.parametrize("value", [
    None, "allow", 1, 1.5, True, ["allow"], [ALLOW], "<undefined>",
], ids=repr)
def test_parse_non_object_is_policy_error(value: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(value))


@pytest.mark.parametrize("value", [
    {"reasons": ["x"]},
    {"action": None, "reasons": []},
    {"action": "maybe", "reasons": []},
    {"action": "ALLOW", "reasons": []},
    {"action": "", "reasons": []},
    {"action": ["allow"], "reasons": []},
    {"action": {"allow": True}, "reasons": []},
    {"action": 1, "reasons": []},
], ids=repr)
def test_parse_missing_or_unknown_action_is_policy_error(value: dict[str, Any]) -> None:
    _assert_policy_error(PolicyDecision.parse(value))


@pytest.mark.parametrize("reasons", [
    "green_tier: ok", ["ok", 1], [None], [["nested"]], {"a": "b"}, 7, None,
], ids=repr)
def test_parse_reasons_not_a_list_of_strings_is_policy_error(reasons: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(_with(reasons=reasons)))


@pytest.mark.parametrize("required", [
    0, -1, 11, 1000, 1.5, True, False, "2", None, [2], float("nan"), float("inf"),
], ids=repr)
def test_parse_bad_approvals_required_is_policy_error(required: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(_with(action="require_approval",
                                                    approvals_required=required)))


@pytest.mark.parametrize("roles", [
    "billing-approver", ["billing-approver", 3], [None], {"r": 1}, 1, None,
], ids=repr)
def test_parse_bad_approver_roles_is_policy_error(roles: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(_with(action="require_approval",
                                                    approver_roles=roles)))


@pytest.mark.parametrize("ttl", [
    0, -1, -0.5, True, False, "3600", [3600], {"s": 1}, float("nan"), float("inf"),
], ids=repr)
def test_parse_bad_ttl_seconds_is_policy_error(ttl: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(_with(action="require_approval",
                                                    ttl_seconds=ttl)))


@pytest.mark.parametrize("redact", [
    "/card", ["card"], ["/card", "ssn"], [1], [None], {"/card": True}, 3,
], ids=repr)
def test_parse_redact_not_json_pointers_is_policy_error(redact: Any) -> None:
    _assert_policy_error(PolicyDecision.parse(_with(redact=redact)))


# ---- PolicyDecision.parse: valid shapes -------------------------------------------------

def test_parse_minimal_allow_uses_defaults() -> None:
    decision = PolicyDecision.parse({"action": "allow", "reasons": ["green_tier: ok"]})
    assert decision == PolicyDecision(Action.ALLOW, ("green_tier: ok",))
    assert decision.approvals_required == 1
    assert decision.approver_roles == ()
    assert decision.ttl_seconds is None
    assert decision.redact == ()


@pytest.mark.parametrize("action", list(Action))
def test_parse_every_action(action: Action) -> None:
    decision = PolicyDecision.parse({"action": str(action), "reasons": ["r: x"]})
    assert decision.action is action
    assert decision.reasons == ("r: x",)


def test_parse_full_require_approval() -> None:
    decision = PolicyDecision.parse({
        "action": "require_approval",
        "reasons": ["over_limit: amount 250 USD", "b: second"],
        "approvals_required": 2,
        "approver_roles": ["billing-approver", "cfo"],
        "ttl_seconds": 3600,
        "redact": ["/card/number", "/a~1b"],
        "extra_field": "ignored",
    })
    assert decision == PolicyDecision(
        action=Action.REQUIRE_APPROVAL,
        reasons=("over_limit: amount 250 USD", "b: second"),
        approvals_required=2,
        approver_roles=("billing-approver", "cfo"),
        ttl_seconds=3600,
        redact=("/card/number", "/a~1b"),
    )


@pytest.mark.parametrize(("given", "parsed"), [(2.0, 2), (1, 1), (10, 10), (10.0, 10)])
def test_parse_integral_approvals_required(given: float, parsed: int) -> None:
    decision = PolicyDecision.parse(_with(action="require_approval", approvals_required=given))
    assert decision.action is Action.REQUIRE_APPROVAL
    assert decision.approvals_required == parsed
    assert type(decision.approvals_required) is int


def test_parse_float_ttl_seconds_becomes_int() -> None:
    decision = PolicyDecision.parse(_with(action="require_approval", ttl_seconds=3600.0))
    assert decision.ttl_seconds == 3600
    assert type(decision.ttl_seconds) is int


def test_parse_positive_ttl_never_becomes_zero() -> None:
    """BUG: ttl_seconds 0.5 passes the `> 0` check, then `int(0.5)` stores 0.

    The handler then does `policy.ttl_seconds or settings.approval_ttl_seconds`, so a policy
    that asked for a half-second approval window silently gets the one-day default.
    Either reject non-integral values (as for approvals_required) or keep them positive.
    """
    decision = PolicyDecision.parse(_with(action="require_approval", ttl_seconds=0.5))
    if decision.action is Action.DENY:
        assert decision.reasons[0] == "policy_error"
    else:
        assert decision.ttl_seconds is not None
        assert decision.ttl_seconds > 0


def test_parse_empty_reasons_list_is_valid() -> None:
    decision = PolicyDecision.parse({"action": "deny", "reasons": []})
    assert decision.action is Action.DENY
    assert decision.reasons == ()


def test_parse_does_not_alias_input_lists() -> None:
    raw = _with(approver_roles=["a"], redact=["/x"])
    decision = PolicyDecision.parse(raw)
    raw["reasons"].append("later")
    raw["approver_roles"].append("b")
    assert decision.reasons == ("green_tier: ok",)
    assert decision.approver_roles == ("a",)


def test_error_constructor_is_deny_policy_error() -> None:
    decision = PolicyDecision.error("engine exploded")
    assert decision.action is Action.DENY
    assert decision.reasons == ("policy_error", "engine exploded")


# ---- decide ------------------------------------------------------------------------------

def test_decide_stage_error_is_deny_with_that_error_and_stage() -> None:
    error = Unauthenticated("token expired")
    verdict = decide(Stage.AUTHENTICATE, error, None, shadow=False)
    assert verdict == Verdict(Action.DENY, Act.REFUSE, Stage.AUTHENTICATE,
                              ("unauthenticated",), error)
    assert verdict.error is error
    assert verdict.code == "unauthenticated"
    assert verdict.header == "deny"


def test_decide_stage_error_beats_an_allowing_policy() -> None:
    error = InsufficientScope("missing billing:refund")
    verdict = decide(Stage.SCOPES, error, PolicyDecision.parse(ALLOW), shadow=False)
    assert (verdict.action, verdict.act, verdict.stage) == (Action.DENY, Act.REFUSE,
                                                            Stage.SCOPES)
    assert verdict.error is error


def test_decide_stage_error_reasons_come_from_the_error() -> None:
    error = PolicyDenied("rejected", reasons=["rejected_by_approver: no"])
    verdict = decide(Stage.POLICY, error, None, shadow=False)
    assert verdict.reasons == ("rejected_by_approver: no",)


def test_decide_stage_error_without_reasons_uses_its_code() -> None:
    verdict = decide(Stage.IDEMPOTENCY, IdempotencyKeyRequired("need a key"), None,
                     shadow=True)
    assert verdict.reasons == ("idempotency_key_required",)
    # Errors before the policy are the agent's to fix, even for a shadow tool.
    assert verdict.act is Act.REFUSE


def test_decide_without_policy_is_deny_policy_error() -> None:
    verdict = decide(Stage.POLICY, None, None, shadow=False)
    assert (verdict.action, verdict.act) == (Action.DENY, Act.REFUSE)
    assert verdict.stage is Stage.POLICY
    assert verdict.reasons == ("policy_error",)
    assert isinstance(verdict.error, PolicyDenied)
    body = verdict.error.body("req-1")["error"]
    assert body["code"] == "policy_denied"
    assert body["reasons"] == ["policy_error"]
    assert body["fallback"] == "route_to_human"


def test_decide_policy_deny_is_policy_denied_with_reasons_and_fallback() -> None:
    policy = PolicyDecision.parse({"action": "deny", "reasons": ["red_tier: never", "z: two"]})
    verdict = decide(Stage.POLICY, None, policy, shadow=False)
    assert (verdict.action, verdict.act) == (Action.DENY, Act.REFUSE)
    assert verdict.reasons == ("red_tier: never", "z: two")
    assert isinstance(verdict.error, PolicyDenied)
    assert verdict.error.status == 403
    assert verdict.code == str(ReasonCode.POLICY_DENIED)
    assert verdict.error.body("req-9") == {"error": {
        "code": "policy_denied", "message": "denied by policy", "request_id": "req-9",
        "reasons": ["red_tier: never", "z: two"], "fallback": "route_to_human"}}


def test_decide_policy_error_decision_is_denied() -> None:
    verdict = decide(Stage.POLICY, None, PolicyDecision.parse("junk"), shadow=False)
    assert verdict.action is Action.DENY
    assert verdict.reasons[0] == "policy_error"
    assert isinstance(verdict.error, PolicyDenied)


@pytest.mark.parametrize(("action", "act"), [(Action.ALLOW, Act.FORWARD),
                                             (Action.REQUIRE_APPROVAL, Act.HOLD)])
def test_decide_allow_forwards_and_require_approval_holds(action: Action, act: Act) -> None:
    policy = PolicyDecision.parse({"action": str(action), "reasons": ["r: why"]})
    verdict = decide(Stage.POLICY, None, policy, shadow=False)
    assert verdict == Verdict(action, act, Stage.POLICY, ("r: why",), None)
    assert verdict.code is None
    assert verdict.header == str(action)


@pytest.mark.parametrize("action", ["allow", "require_approval", "deny"])
def test_decide_shadow_tools_only_report(action: str) -> None:
    """The shadow rule, in its one place: whatever the policy says is reported, never done."""
    policy = PolicyDecision.parse({"action": action, "reasons": ["r: why"]})
    verdict = decide(Stage.POLICY, None, policy, shadow=True)
    assert verdict.act is Act.SHADOW
    assert verdict.action == action
    assert verdict.header == "shadow"


def test_decide_shadow_reports_a_failed_policy_but_refuses_earlier_errors() -> None:
    unavailable = decide(Stage.POLICY, PolicyUnavailable("slow"), None, shadow=True)
    assert (unavailable.act, unavailable.action) == (Act.SHADOW, Action.DENY)
    assert decide(Stage.POLICY, None, None, shadow=True).act is Act.SHADOW
    assert decide(Stage.AUTHENTICATE, Unauthenticated("x"), None,
                  shadow=True).act is Act.REFUSE


@pytest.mark.parametrize("shadow", [False, True])
def test_decide_a_retry_is_answered_never_decided_again(shadow: bool) -> None:
    deny = PolicyDecision.parse({"action": "deny", "reasons": ["red_tier: x"]})
    held = decide(Stage.IDEMPOTENCY, None, deny, shadow, answered="held")
    assert (held.action, held.act, held.reasons) == (Action.REQUIRE_APPROVAL,
                                                     Act.ANSWER_HELD, ("idempotent_retry",))
    replay = decide(Stage.COMMIT, None, deny, shadow, answered="replay")
    assert (replay.action, replay.act, replay.reasons) == (Action.ALLOW, Act.REPLAY,
                                                           ("idempotent_replay",))
    error = decide(Stage.IDEMPOTENCY, IdempotencyKeyRequired("x"), None, shadow,
                   answered="held")
    assert error.act is Act.REFUSE, "an error always wins"
