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
from gateway.errors import AuditUnavailable, ReasonCode

REDACTED = "[REDACTED]"
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")  # a JSON-pointer array index, ASCII digits only
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
log = logging.getLogger("toolgate")


class FdSink:
    """A structlog logger that appends each rendered record as one line to a descriptor."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def msg(self, message: bytes) -> None:
        data = message + b"\n"
        written = os.write(self.fd, data)
        while written < len(data):  # only on a full disk or a pipe; keep the line whole
            written += os.write(self.fd, data[written:])

    info = msg


def _to_record(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    kind = event_dict.pop("event")
    ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"ts": ts, "kind": kind, **event_dict}


def _render(_: Any, __: str, event_dict: Mapping[str, Any]) -> bytes:
    return orjson.dumps(event_dict, option=orjson.OPT_NON_STR_KEYS)


class AuditLog:
    """Every configured sink; `write` puts one record in all of them or raises."""

    def __init__(self, settings: AuditSettings) -> None:
        self._owned: list[int] = []
        sinks = []
        if settings.file is not None:
            sinks.append(FdSink(self._open(settings.file), str(settings.file)))
        if settings.stdout:
            sinks.append(FdSink(sys.stdout.fileno(), "stdout"))
        self.location = str(settings.file) if settings.file else "stdout"
        self._loggers = [
            structlog.wrap_logger(
                sink, processors=[_to_record, _render],
                wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                context_class=dict, cache_logger_on_first_use=True)
            for sink in sinks
        ]

    def _open(self, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: the log holds arguments (redacted) and decisions; owner-only by default.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._owned.append(fd)
        return fd

    def write(self, kind: str, record: Mapping[str, Any]) -> None:
        try:
            for logger in self._loggers:
                logger.info(kind, **record)
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
        self.decision_written = False
        self._outcome_due = False

    def decision(self, **fields: Any) -> None:
        """Write the decision record. Raises `AuditUnavailable` (then take no action)."""
        self._log.write("decision", {**self.base, **fields})
        self.decision_written = True

    def expect_outcome(self) -> None:
        """The action is starting: from now on an outcome record is owed."""
        self._outcome_due = True

    def outcome(self, **fields: Any) -> None:
        self._outcome_due = False
        self._log.write("outcome", {**self.base, **fields})

    async def __aenter__(self) -> CallAudit:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None and self.decision_written and not self._outcome_due:
            return
        code = ReasonCode.INTERNAL_ERROR if exc_type is not None else None
        if exc_type is not None and issubclass(exc_type, BaseException) and not issubclass(
                exc_type, Exception):
            code = None  # cancellation: the call was abandoned, not failed
        reason = "cancelled" if exc_type is not None and code is None else str(
            code or ReasonCode.INTERNAL_ERROR)
        try:
            if not self.decision_written:
                self.decision(action="deny", stage="internal", reasons=[reason], code=reason)
            elif self._outcome_due:
                self.outcome(error=reason)
        except AuditUnavailable:
            log.exception("audit record for %s lost", self.base.get("decision_id"))
