"""The state-store interface: durable state shared by the pipeline and the admin API.

Implementations: SQLite (`gateway.store.sqlite`, the embedded default) and PostgreSQL
(`gateway.store.postgres`, shared by replicas). The methods follow the pipeline's
transactions: one lookup of a key's state; one transaction that claims the key and reserves
the budget of a call about to be forwarded (`commit_forward`), or claims the key and stores
a held call (`commit_hold`); one that settles the answer. Every method raises
`StoreUnavailable` when the database cannot be reached, so callers fail closed.

The domain owns the types (`gateway.approvals.model`, `gateway.state`); the store only
persists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from gateway.approvals.model import Approval, ApprovalStatus
from gateway.state.budgets import Reservation, Usage
from gateway.state.idempotency import Answer, KeyClaim, KeyState, Scope
from gateway.state.killswitch import KillSwitch

# Called inside a store transaction; raising aborts it. Used to refuse a vote (a check)
# and to write the audit record before the change commits (write-ahead).
ApprovalHook = Callable[[Approval], None]


class StateStore(Protocol):
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    # -- a call's transactions ---------------------------------------------------------------

    async def key_state(self, scope: Scope) -> KeyState | None:
        """What the key holds (with its held call, if any), in one lookup."""

    async def commit_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                             now: float) -> KeyState | None:
        """In one transaction, claim the key (unless `claim` is None) and reserve the budget
        (unless `reservation` is None). Returns None when both are done, or the key's state
        when it belongs to another call (nothing is reserved then). Raises
        `BudgetExceeded`, and then the key is not claimed either."""

    async def commit_hold(self, approval: Approval, claim: KeyClaim | None,
                          record: ApprovalHook) -> KeyState | None:
        """In one transaction, claim the key as held by `approval` (unless `claim` is None),
        store the approval, and call `record` before committing. Returns None when held,
        or the key's state when it belongs to another call (nothing is stored then)."""

    async def settle(self, claim: KeyClaim, answer: Answer, now: float) -> None:
        """After the call may have reached the upstream: store its final `answer` under the
        key, if this request still holds it. The reservation stays: the call may have run."""

    async def undo_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                           now: float) -> None:
        """For a call known never to have run (nothing was sent): free the key, and give
        back the reservation — the call and its spend."""

    async def purge_keys(self, before: float) -> int:
        """Forget answers (and keys of decided held calls) last changed before `before`."""

    async def usage(self, tenant: str, run_id: str) -> Usage: ...

    async def purge_runs(self, before: float) -> int:
        """Forget the counters of runs last used before `before`; how many."""

    # -- the approval queue ------------------------------------------------------------------

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]: ...

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        """Atomically: run `check` on the current approval (it raises to refuse), add the
        vote, move pending → approved when enough distinct approvers have voted, and call
        `record` with the result before committing. Raises `KeyError` for an unknown id."""

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         check: ApprovalHook | None = None,
                         **fields: Any) -> Approval | None:
        """Move to `to` only if the current state is in `from_states` — and, with
        `owner_is=(x,)`, only if the owner is still x — (None if not), calling `record`
        with the result before committing. `check`, if given, sees the current approval
        first, inside the transaction, and raises to refuse (`KeyError`: no such id)."""

    async def heartbeat(self, instance: str, now: float) -> None:
        """This gateway instance is alive (it owns the calls it is sending)."""

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        """Calls left `executing` by an instance with no heartbeat for `stale_s`."""

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        """Every pending approval past its expiry, now expired (`record` called for each)."""

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]: ...

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch: ...

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None: ...

    async def kill_list(self) -> list[KillSwitch]: ...

    async def seen(self, kind: Literal["tenant", "agent"], name: str) -> bool:
        """Whether the store holds any trace of this tenant (a run budget, an idempotency
        key or a held call) or agent (a held call it made). A kill switch's scope is checked
        against it (`gateway.admin.killswitch`)."""

    async def close(self) -> None: ...
