"""Decisions as types: the policy's answer, parsed once, and the gateway's verdict.

Pure code: no I/O, no aiohttp, no event loop. `PolicyDecision.parse` is the one place Rego
output is interpreted; any shape other than DESIGN §2.2's becomes deny/`policy_error`.
`decide` turns the facts the stages gathered into the `Verdict` the handler carries out:
the one place that says which act follows from which facts (the shadow rule included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from gateway.core.errors import GatewayError, PolicyDenied, ReasonCode
from gateway.core.stage import Stage

AnsweredFrom = Literal["held", "replay"]
MAX_APPROVALS_REQUIRED = 10
MAX_TTL_SECONDS = 30 * 86_400  # a held call older than a month is a forgotten one


class Action(StrEnum):
    ALLOW = "allow"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


@dataclass(frozen=True)
class PolicyDecision:
    action: Action
    reasons: tuple[str, ...]
    approvals_required: int = 1
    approver_roles: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    redact: tuple[str, ...] = ()
    # The policy revision that answered, when the engine reports one per answer (OPA's
    # bundle revision); None: the bundle's own revision.
    revision: str | None = field(default=None, compare=False)

    @classmethod
    def error(cls, detail: str) -> PolicyDecision:
        return cls(Action.DENY, (str(ReasonCode.POLICY_ERROR), detail))

    @classmethod
    def parse(cls, value: Any) -> PolicyDecision:
        """Parse `data.toolgate.decision`; anything malformed is deny/`policy_error`."""
        if not isinstance(value, dict):
            return cls.error("policy decision is undefined or not an object")
        try:
            action = Action(str(value.get("action")))
        except ValueError:
            return cls.error("policy decision has no valid action")
        reasons = value.get("reasons")
        if not _str_list(reasons):
            return cls.error("policy reasons must be a list of strings")
        required = value.get("approvals_required", 1)
        if (not isinstance(required, int | float) or isinstance(required, bool)
                or not math.isfinite(required) or required != int(required)
                or not 1 <= required <= MAX_APPROVALS_REQUIRED):
            return cls.error("approvals_required must be an integer from 1 to "
                             f"{MAX_APPROVALS_REQUIRED}")
        roles = value.get("approver_roles", [])
        if not _str_list(roles):
            return cls.error("approver_roles must be a list of strings")
        ttl = value.get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)
                                or not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL_SECONDS):
            return cls.error(f"ttl_seconds must be a number from 1 to {MAX_TTL_SECONDS}")
        redact = value.get("redact", [])
        if not _str_list(redact) or any(not p.startswith("/") for p in redact):
            return cls.error("redact must be a list of JSON pointers")
        assert reasons is not None  # checked by _str_list
        return cls(action=action, reasons=tuple(reasons), approvals_required=int(required),
                   approver_roles=tuple(roles),
                   ttl_seconds=None if ttl is None else math.ceil(ttl),
                   redact=tuple(redact))


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class Act(StrEnum):
    """What the gateway does with a call; the handler dispatches on it and decides nothing."""

    FORWARD = "forward"            # send the planned call upstream
    HOLD = "hold"                  # store it for approval, answer 202
    ANSWER_HELD = "answer_held"    # a retry of a held call: answer from its current state
    REPLAY = "replay"              # a retry of a completed call: its stored answer
    SHADOW = "shadow"              # a shadow tool: report what would have happened
    REFUSE = "refuse"              # the error, as a JSON body


@dataclass(frozen=True)
class Verdict:
    """What the gateway will do with a call, and why. `error` is set exactly when refusing
    (and for a shadow tool whose policy failed, which is reported, not refused)."""

    action: Action
    act: Act
    stage: Stage
    reasons: tuple[str, ...]
    error: GatewayError | None = None

    @property
    def code(self) -> str | None:
        return None if self.error is None else str(self.error.code)

    @property
    def header(self) -> str:
        """`X-Toolgate-Decision`: the action, or `shadow`."""
        return "shadow" if self.act is Act.SHADOW else str(self.action)


def decide(stage: Stage, error: GatewayError | None, policy: PolicyDecision | None,
           shadow: bool, *, answered: AnsweredFrom | None = None) -> Verdict:
    """Combine the pipeline's facts into one verdict.

    `stage` is the stage that decided (the one that refused or answered, else the last
    that ran); `error` is what a stage refused with; `policy` is the parsed policy decision
    when the pipeline got that far; `shadow` is the tool's mode; `answered` says the call
    is a retry answered from what its key already has: a held call, or a completed call's
    stored answer (a replay), never decided again.
    """
    if error is None and answered == "held":
        return Verdict(Action.REQUIRE_APPROVAL, Act.ANSWER_HELD, stage, ("idempotent_retry",))
    if error is None and answered == "replay":
        return Verdict(Action.ALLOW, Act.REPLAY, stage, ("idempotent_replay",))
    if error is not None:
        reasons = tuple(error.extra.get("reasons", ())) or (str(error.code),)
        # A shadow tool reports what its policy did, failures included; errors before the
        # policy (a bad token, bad arguments) are still the agent's to fix.
        act = Act.SHADOW if shadow and stage is Stage.POLICY else Act.REFUSE
        return Verdict(Action.DENY, act, stage, reasons, error)
    if policy is None:
        # SECURITY: no policy answer is never an allow.
        return Verdict(Action.DENY, Act.SHADOW if shadow else Act.REFUSE, stage,
                       (str(ReasonCode.POLICY_ERROR),),
                       PolicyDenied("no policy decision", reasons=["policy_error"],
                                    fallback="route_to_human"))
    if policy.action is Action.DENY:
        return Verdict(Action.DENY, Act.SHADOW if shadow else Act.REFUSE, stage,
                       policy.reasons,
                       PolicyDenied("denied by policy", reasons=list(policy.reasons),
                                    fallback="route_to_human"))
    if shadow:
        return Verdict(policy.action, Act.SHADOW, stage, policy.reasons)
    act = Act.FORWARD if policy.action is Action.ALLOW else Act.HOLD
    return Verdict(policy.action, act, stage, policy.reasons)
