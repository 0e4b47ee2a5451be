"""Decisions as types: the policy's answer, parsed once, and the gateway's verdict.

Pure code: no I/O, no aiohttp, no event loop. `PolicyDecision.parse` is the one place Rego
output is interpreted; any shape other than DESIGN §2.2's becomes deny/`policy_error`.
`decide` turns the facts the stages gathered into the `Verdict` the handler carries out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from gateway.core.errors import GatewayError, PolicyDenied, ReasonCode

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


@dataclass(frozen=True)
class Verdict:
    """What the gateway will do with a call, and why. `error` is set exactly when denying."""

    action: Action
    stage: str
    reasons: tuple[str, ...]
    error: GatewayError | None = None
    shadow: bool = False
    bound: bool = False   # a retry answered from its held call, not decided again

    @property
    def code(self) -> str | None:
        return None if self.error is None else str(self.error.code)


def decide(stage: str, error: GatewayError | None, policy: PolicyDecision | None,
           shadow: bool, *, bound: Literal["held", "replay"] | None = None) -> Verdict:
    """Combine the pipeline's facts into one verdict.

    `stage` is the stage that ran last (or failed); `error` is what a stage refused with;
    `policy` is the parsed policy decision when the pipeline got that far; `bound` says the
    call is a retry answered from what its key already has: a held call, or a completed
    call's stored answer (a replay).
    """
    if error is None and bound == "held":
        return Verdict(Action.REQUIRE_APPROVAL, stage, ("idempotent_retry",), None, shadow,
                       bound=True)
    if error is None and bound == "replay":
        return Verdict(Action.ALLOW, stage, ("idempotent_replay",), None, shadow, bound=True)
    if error is not None:
        reasons = tuple(error.extra.get("reasons", ())) or (str(error.code),)
        return Verdict(Action.DENY, stage, reasons, error, shadow)
    if policy is None:
        # SECURITY: no policy answer is never an allow.
        return Verdict(Action.DENY, stage, (str(ReasonCode.POLICY_ERROR),),
                       PolicyDenied("no policy decision", reasons=["policy_error"],
                                    fallback="route_to_human"), shadow)
    if policy.action is Action.DENY:
        return Verdict(Action.DENY, stage, policy.reasons,
                       PolicyDenied("denied by policy", reasons=list(policy.reasons),
                                    fallback="route_to_human"), shadow)
    return Verdict(policy.action, stage, policy.reasons, None, shadow)
