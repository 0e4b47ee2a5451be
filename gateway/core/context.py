"""What the pipeline learns about one call, stage by stage.

The `ToolCall` (from the entrance) and the pinned `Bundle` are there from the start; each
stage adds the facts it establishes. A fact a later stage needs is read through a property
that fails loudly if the stage that sets it has not run — an ordering bug, which the
pipeline turns into a deny (`internal_error`), never into a call made on missing facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.bundle.specs import Mode
from gateway.core.decision import AnsweredFrom, Verdict, decide
from gateway.core.errors import GatewayError
from gateway.core.stage import Stage
from gateway.state.budgets import Reservation, Usage
from gateway.state.idempotency import KeyStatus

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.bundle import Bundle
    from gateway.core.call import ToolCall
    from gateway.core.decision import PolicyDecision
    from gateway.core.outbound import OutboundPlan
    from gateway.state.idempotency import KeyClaim, KeyState


class OutOfOrder(RuntimeError):
    """A stage read a fact no earlier stage has set."""


@dataclass
class CallContext:
    call: ToolCall
    bundle: Bundle                       # pinned when the call arrived; used to the end
    stage: Stage = Stage.AUTHENTICATE
    run_id: str | None = None            # authenticate: the signed claim, else the hint
    idempotency_key: str | None = None   # idempotency: checked, None for `idempotency: none`
    claim: KeyClaim | None = None        # idempotency: what taking the key writes
    answered: KeyState | None = None     # idempotency/commit: the key's answer for a retry
    args_valid: bool = False             # validate: the arguments match input_schema
    usage: Usage | None = None           # usage: the run's counters before this call
    spend: dict[str, float] | None = None  # usage: what this call would spend
    policy_input: dict[str, Any] | None = None    # policy: the document it was shown
    decision: PolicyDecision | None = None        # policy
    policy_ms: float = 0.0
    reservation: Reservation | None = None  # commit: what this call counted against its run
    committed: bool = False              # commit: key and budget taken, undo if not sent
    _principal: Principal | None = None
    _plan: OutboundPlan | None = None

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            raise OutOfOrder("the principal is read before `authenticate` ran")
        return self._principal

    @principal.setter
    def principal(self, value: Principal) -> None:
        self._principal = value

    @property
    def known_principal(self) -> Principal | None:
        """The principal if authentication got that far (for records of any outcome)."""
        return self._principal

    @property
    def plan(self) -> OutboundPlan:
        if self._plan is None:
            raise OutOfOrder("the outbound plan is read before `plan` ran")
        return self._plan

    @plan.setter
    def plan(self, value: OutboundPlan) -> None:
        self._plan = value

    def verdict(self, error: GatewayError | None = None) -> Verdict:
        """The verdict the facts gathered so far give: `error` is what the current stage
        refused with. The stage that refused or answered decided; otherwise the policy."""
        answered = self.answered
        bound: AnsweredFrom | None = (None if answered is None else "held"
                                      if answered.status is KeyStatus.HELD else "replay")
        deciding = self.stage if error is not None or bound is not None else Stage.POLICY
        return decide(deciding, error, self.decision, self.call.spec.mode is Mode.SHADOW,
                      answered=bound)
