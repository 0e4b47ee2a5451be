"""Operational logs on stderr (not the audit log): one line per event, JSON or console.

Every stdlib logger — the gateway's `toolgate…` loggers, aiohttp's, asyncio's — writes
through one root handler whose formatter is structlog's stdlib integration
(`structlog.stdlib.ProcessorFormatter`), so everything the process logs has one shape:

- `json`: one JSON object per line, keys in this order: `timestamp` (RFC 3339, UTC,
  milliseconds), `level` (`debug` … `critical`), `logger`, `message`, under `toolgate serve
  --workers N` `process` (`worker` or `supervisor`) and `worker` (its index), and for an
  exception `exception: {"types": [...], "frames": [...]}`.
- `console`: `2026-12-03T09:10:49.387Z INFO toolgate worker=2: message`, with an exception
  as ` exception=RuntimeError<-OSError at file:line in function > …` on the same line.

`log.format: auto` (the default) is JSON unless stderr is a terminal. `log.level` sets the
root logger's level, so it applies to aiohttp's loggers too.

SECURITY: an exception is logged as its types and frames only, never its message. aiohttp's
parser errors quote the raw request — `Authorization` header included — and other messages
can quote a body or a credential. Control characters in a message are escaped, so no log
line can be split in two or forged by what a message quotes. asyncio's own report of an
error nobody handled ("Task exception was never retrieved", "Exception in callback …")
writes `repr()`s — of the exception, the task, a callback's arguments — into the message
itself, so `toolgate serve` replaces it (`loop_exception`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog

from gateway.config import LogSettings

FORMATS = ("json", "console")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
MAX_CHAIN = 10    # exceptions of a cause/context chain named, at most
MAX_FRAMES = 30   # innermost frames kept
# C0 controls and DEL, escaped in console lines (JSON escapes them itself).
_ESCAPES = {**{c: f"\\x{c:02x}" for c in (*range(32), 127)}, 9: "\\t", 10: "\\n", 13: "\\r"}
FIRST_KEYS = ("timestamp", "level", "logger", "message", "process", "worker")
# Where a `repr()` starts in asyncio's messages ("Exception in callback f('a secret')").
_REPR = re.compile(r"""[(<{\['"=]""")
MAX_LOOP_TEXT = 200

EventDict = MutableMapping[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def exception_facts(exc_info: Any) -> dict[str, list[str]] | None:
    """SECURITY: what may be logged of an exception — the type of each exception in its
    cause/context chain (outermost first) and the frames of the outermost, never a message."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
        tb = exc_info.__traceback__
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc, tb = exc_info[1], exc_info[2]
    else:
        return None
    if exc is None:
        return None
    frames = [f"{frame.filename}:{frame.lineno} in {frame.name}"
              for frame in traceback.extract_tb(tb)[-MAX_FRAMES:]]
    types: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(types) < MAX_CHAIN:
        types.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return {"types": types, "frames": frames}


def _facts(fields: Mapping[str, Any]) -> Callable[[Any, str, EventDict], EventDict]:
    """The event dict in the order a reader scans it, from the stdlib record; `fields` (the
    process, the worker) are added to every line."""
    def facts(_: Any, __: str, ed: EventDict) -> EventDict:
        record: logging.LogRecord = ed.pop("_record")
        ed.pop("_from_structlog", None)
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": str(ed.pop("event", "")),
            **fields,
        }
        exception = exception_facts(ed.pop("exc_info", None))
        ed.pop("exception", None)    # never a rendered traceback, whoever put it there
        ed.pop("stack_info", None)   # multi-line; nothing the gateway asks for
        if exception is not None:
            out["exception"] = exception
        out.update(ed)
        return out
    return facts


def render_json(_: Any, __: str, ed: EventDict) -> str:
    """One JSON object; orjson escapes every control character, so it is one line."""
    return orjson.dumps(ed, default=str).decode()


def _escaped(text: str) -> str:
    return text.translate(_ESCAPES)


def render_console(_: Any, __: str, ed: EventDict) -> str:
    """`<timestamp> <LEVEL> <logger>[ worker=N| supervisor]: <message>[ key=value…]`."""
    where = ed["logger"]
    if ed.get("process") == "supervisor":
        where += " supervisor"
    elif "worker" in ed:
        where += f" worker={ed['worker']}"
    line = f"{ed['timestamp']} {ed['level'].upper()} {where}: {ed['message']}"
    extra = {k: v for k, v in ed.items() if k not in (*FIRST_KEYS, "exception")}
    line += "".join(f" {k}={v}" for k, v in extra.items())
    exception = ed.get("exception")
    if exception is not None:
        line += " exception=" + "<-".join(exception["types"])
        if exception["frames"]:
            line += " at " + " > ".join(exception["frames"])
    return _escaped(line)


class SafeFormatter(structlog.stdlib.ProcessorFormatter):
    """The root handler's formatter: every record as one line of `fmt` (`json` or
    `console`), with the fields of `fields` on each. SECURITY: see the module docstring —
    an exception's message is never written."""

    def __init__(self, fmt: str = "json", fields: Mapping[str, Any] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {FORMATS}")
        super().__init__(processors=[_facts(dict(fields or {})),
                                     render_json if fmt == "json" else render_console],
                         keep_exc_info=False, keep_stack_info=False)
        self.format_name = fmt


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler that, when a record cannot be formatted (bad `%` arguments), writes
    one line saying so instead of logging's multi-line report, which quotes the record's
    message and arguments."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        said = logging.LogRecord(record.name, logging.ERROR, record.pathname, record.lineno,
                                 "a log record could not be formatted (at %s:%d)",
                                 (record.pathname, record.lineno), None)
        try:
            self.stream.write(self.format(said) + self.terminator)
            self.flush()
        except Exception:  # noqa: BLE001, S110 (stderr itself is gone: nothing left to tell)
            pass


def chosen_format(settings: LogSettings, stream: TextIO) -> str:
    """`auto`: JSON unless the stream is a terminal (a person reading)."""
    if settings.format != "auto":
        return settings.format
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure_logging(settings: LogSettings | None = None, *, worker: int | None = None,
                      supervisor: bool = False, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) in the configured format and level.
    Under `--workers N`, each line names its process (`worker=2`, `supervisor`)."""
    settings = settings or LogSettings()
    stream = stream or sys.stderr
    fields: dict[str, Any] = {}
    if supervisor:
        fields = {"process": "supervisor"}
    elif worker is not None:
        fields = {"process": "worker", "worker": worker}
    handler = _Handler(stream)
    handler.setFormatter(SafeFormatter(chosen_format(settings, stream), fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(settings.level, logging.INFO))


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler (`loop.set_exception_handler`; `gateway.serve`).

    SECURITY: asyncio's default handler logs the context's values as `repr()`s — the
    exception's message and a callback's arguments among them — in the log message itself,
    where `SafeFormatter` cannot take them out. This one logs asyncio's message up to the
    first `repr()` in it, the task's name, and the exception through the formatter: its
    types and frames only."""
    def plain(value: object) -> str:
        return " ".join(_REPR.split(str(value), maxsplit=1)[0].split())

    try:
        text = plain(context.get("message") or "")
        task = context.get("task") or context.get("future")
        if isinstance(task, asyncio.Task):
            text += f" (task {plain(task.get_name())})"
        exc = context.get("exception")
        logging.getLogger("asyncio").error(
            "%s", text[:MAX_LOOP_TEXT] or "an error in the event loop",
            exc_info=exc if isinstance(exc, BaseException) else None)
    except Exception:   # asyncio would report this one with the context's reprs
        logging.getLogger("asyncio").exception("an error in the event loop could not be "
                                               "logged")
