"""The policy-engine interface: what the `policy` stage asks, whichever engine answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gateway.core.decision import PolicyDecision


class PolicyEngine(Protocol):
    """Evaluates the policy query for one input document.

    `evaluate` returns a parsed decision (malformed output is already deny/`policy_error`)
    and raises `PolicyUnavailable` when the engine cannot answer at all (timeout, crash,
    unreachable server) so the caller can fail closed with a 503.
    """

    @property
    def revision(self) -> str: ...

    async def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision: ...

    async def close(self) -> None: ...
