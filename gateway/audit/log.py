"""The audit log's writer (DESIGN §7): every record, of every kind, is written here.

Records (built by `gateway.audit.records`) go through structlog with an orjson renderer to
every configured sink (a JSON-lines file, stdout). A file sink appends each record with a
single `write(2)` on an `O_APPEND` descriptor, so a record is in the file (the OS page
cache) before the action starts and replicas sharing a file never interleave lines. A
failed write raises `AuditUnavailable`: the caller then takes no action (fail closed).
Records are written from the event loop and from the SQLite store's thread (a record
written inside a transaction, before it commits), so one lock keeps them whole and in order.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from gateway.config import AuditSettings
from gateway.core.errors import AuditUnavailable

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
        self._lock = threading.Lock()
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
            with self._lock:
                self._logger.info(kind, fields=record)
        except OSError as exc:
            log.exception("audit sink write failed")
            raise AuditUnavailable("the audit log cannot be written; no action was taken") \
                from exc

    def close(self) -> None:
        for fd in self._owned:
            os.close(fd)
        self._owned.clear()
