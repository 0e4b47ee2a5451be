"""`CallAudit`: the structural guarantee of "exactly one decision record per call".

It is an async context manager around the whole life of a call. The decision record is
written once, before any action (a second attempt after a partial failure would leave two);
an outcome record is owed from the moment an action starts; on every exit path — errors and
cancellation included — whatever is still missing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from gateway.audit import records
from gateway.audit.log import AuditLog
from gateway.core.errors import AuditUnavailable, ReasonCode

log = logging.getLogger("toolgate")


class CallAudit:
    def __init__(self, audit_log: AuditLog, decision_id: str, trace_id: str | None,
                 revision: str | None = None, tool: str | None = None) -> None:
        self._log = audit_log
        # Every record of the call names the bundle it was judged by, and the tool once it
        # is known (a report joins outcomes to their tool without the decision record).
        self.base: dict[str, Any] = {"decision_id": decision_id, "trace_id": trace_id}
        if revision is not None:
            self.base["policy_revision"] = revision
        if tool is not None:
            self.base["tool"] = tool
        self._decision_tried = False
        self.decision_written = False
        self._outcome_due = False

    def decision(self, record: Mapping[str, Any]) -> None:
        """Write the decision record. Raises `AuditUnavailable`: then take no action.

        A record that cannot even be rendered (a gateway bug: nothing reached a sink) does
        not count as tried, so the exit still writes the call's `internal_error` record."""
        if record.get("policy_revision"):
            self.base["policy_revision"] = record["policy_revision"]   # what decided
        try:
            self._log.write("decision", {**self.base, **record})
        except AuditUnavailable:
            self._decision_tried = True   # a sink may hold part of it: never a second one
            raise
        self._decision_tried = True
        self.decision_written = True

    def expect_outcome(self) -> None:
        """The action is starting: from now on an outcome record is owed."""
        self._outcome_due = True

    def handed_over(self) -> None:
        """The action continues elsewhere (a held call's executor writes its outcome)."""
        self._outcome_due = False

    def outcome(self, record: Mapping[str, Any]) -> None:
        """Write the outcome record. Never raises: the action has already happened, and the
        agent must be told its real result, not that nothing was done."""
        self._outcome_due = False
        try:
            self._log.write("outcome", {**self.base, **record})
        except AuditUnavailable:
            log.critical("outcome record for %s lost after the action was taken",
                         self.base["decision_id"])

    async def __aenter__(self) -> CallAudit:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._decision_tried and not self._outcome_due:
            return
        # Cancellation (a BaseException, not an Exception) means the call was abandoned.
        failed = exc_type is None or issubclass(exc_type, Exception)
        reason = str(ReasonCode.INTERNAL_ERROR) if failed else "cancelled"
        if self._outcome_due:
            self.outcome(records.outcome(error=reason))
            return
        try:
            self.decision(records.internal_decision(reason))
        except AuditUnavailable:
            log.exception("decision record for %s lost", self.base["decision_id"])
