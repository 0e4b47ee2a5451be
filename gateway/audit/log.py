"""The audit log (DESIGN §7): one decision record per call, before any action is taken, and
one outcome record for every call that reached an upstream (or whose action failed).

Records go through structlog with an orjson renderer to every configured sink (a JSON-lines
file, stdout). A file sink appends each record with a single `write(2)` on an `O_APPEND`
descriptor, so a record is in the file (the OS page cache) before the action starts and
replicas sharing a file never interleave lines. A failed write raises `AuditUnavailable`:
the caller then takes no action (fail closed).

`CallAudit` is the structural guarantee of "exactly one decision record per call": it is an
async context manager around the whole call and writes the missing records on every exit
path, including unexpected exceptions and cancellation.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import structlog

from gateway.config import AuditSettings
from gateway.core.errors import AuditUnavailable, ReasonCode

REDACTED = "[REDACTED]"
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")  # a JSON-pointer array index, ASCII digits only
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
log = logging.getLogger("toolgate")


class FanoutSink:
    """A structlog logger that appends each rendered record, the same bytes, as one line to
    every descriptor. All are tried; if any fails, `OSError` is raised after the others."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def msg(self, message: bytes) -> None:
        data = message + b"\n"
        failure: OSError | None = None
        for fd in self.fds:
            try:
                written = os.write(fd, data)
                while written < len(data):  # only on a full disk or a pipe; keep it whole
                    written += os.write(fd, data[written:])
            except OSError as exc:
                failure = exc
        if failure is not None:
            raise failure

    info = msg


def _to_record(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    # The fields travel as one argument, so a field may be called "event" like structlog's.
    ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"ts": ts, "kind": event_dict["event"], **event_dict["fields"]}


def _render(_: Any, __: str, event_dict: Mapping[str, Any]) -> bytes:
    return orjson.dumps(event_dict, option=orjson.OPT_NON_STR_KEYS)


class AuditLog:
    """Every configured sink; `write` puts one record in all of them or raises."""

    def __init__(self, settings: AuditSettings) -> None:
        self._owned: list[int] = []
        fds = []
        if settings.file is not None:
            fds.append(self._open(settings.file))
        if settings.stdout:
            fds.append(sys.stdout.fileno())
        self.location = str(settings.file) if settings.file else "stdout"
        # One logger, one rendering: every sink gets the same bytes (and the same ts).
        self._logger = structlog.wrap_logger(
            FanoutSink(fds), processors=[_to_record, _render],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            context_class=dict, cache_logger_on_first_use=True)

    def _open(self, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: the log holds arguments (redacted) and decisions; owner-only by default.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._owned.append(fd)
        return fd

    def write(self, kind: str, record: Mapping[str, Any]) -> None:
        try:
            self._logger.info(kind, fields=record)
        except OSError as exc:
            log.exception("audit sink write failed")
            raise AuditUnavailable("the audit log cannot be written; no action was taken") \
                from exc

    def close(self) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned.clear()


def trace_id(traceparent: str | None) -> str | None:
    m = _TRACEPARENT.match(traceparent or "")
    return m.group(1) if m else None


def redact(args: Any, pointers: Iterable[str]) -> Any:
    """A copy of `args` with the value at each JSON pointer replaced by `[REDACTED]`.

    The segment `*` matches every element of a list (or every member of an object), so
    `/items/*/card` redacts the card of each item.
    """
    pointers = list(pointers)
    if not pointers or not isinstance(args, dict):
        return args
    out = copy.deepcopy(args)
    for pointer in pointers:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        if parts:
            _redact(out, parts)
    return out


def _redact(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        children = (list(enumerate(node)) if isinstance(node, list)
                    else list(node.items()) if isinstance(node, dict) else [])
    elif isinstance(node, dict) and head in node:
        children = [(head, node[head])]
    elif isinstance(node, list) and _INDEX.match(head) and int(head) < len(node):
        children = [(int(head), node[int(head)])]
    else:
        return
    for key, child in children:
        if rest:
            _redact(child, rest)
        else:
            node[key] = REDACTED


class CallAudit:
    """The audit records of one call; see the module docstring for the guarantee."""

    def __init__(self, log: AuditLog, **base: Any) -> None:
        self._log = log
        self.base: dict[str, Any] = base
        self._decision_tried = False
        self._outcome_due = False

    def decision(self, **fields: Any) -> None:
        """Write the decision record. Raises `AuditUnavailable`: then take no action.

        Tried once only: if one sink took the record and another failed, a second attempt
        would leave two decision records for one call.
        """
        self._decision_tried = True
        self._log.write("decision", {**self.base, **fields})

    def expect_outcome(self) -> None:
        """The action is starting: from now on an outcome record is owed."""
        self._outcome_due = True

    def handed_over(self) -> None:
        """The action continues elsewhere (a held call's executor writes its outcome)."""
        self._outcome_due = False

    def outcome(self, **fields: Any) -> None:
        """Write the outcome record. Never raises: the action has already happened, and the
        agent must be told its real result, not that nothing was done."""
        self._outcome_due = False
        try:
            self._log.write("outcome", {**self.base, **fields})
        except AuditUnavailable:
            log.critical("outcome record for %s lost after the action was taken",
                         self.base.get("decision_id"))

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
            self.outcome(error=reason)
            return
        try:
            self.decision(action="deny", stage="internal", reasons=[reason], code=reason)
        except AuditUnavailable:
            log.exception("decision record for %s lost", self.base.get("decision_id"))
