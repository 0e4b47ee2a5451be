"""`gateway.logs`: every record — the gateway's, aiohttp's — is one line of JSON or console
text through structlog's `ProcessorFormatter` on the root handler, and what is logged of an
exception is its types and frames, never its message: a message can quote a client's token
or body (THREAT_MODEL U5)."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from gateway.config import LogSettings
from gateway.logs import SafeFormatter, configure_logging, loop_exception

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzdmMtYWdlbnQifQ.c2lnbmF0dXJl"
SECRET = "upstream-secret-9f8e7d6c5b4a"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
CONSOLE = re.compile(r"(\S+) ([A-Z]+) (\S+)( worker=\d+| supervisor)?: (.*)")


@pytest.fixture(autouse=True)
def root_restored() -> Iterator[None]:
    """Each test configures the root logger as `toolgate serve` does; put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def configured(fmt: str, level: str = "info", **fields: Any) -> io.StringIO:
    out = io.StringIO()
    configure_logging(LogSettings(level=level, format=fmt), stream=out, **fields)
    return out


def lines(out: io.StringIO) -> list[str]:
    text = out.getvalue()
    assert text.endswith("\n")
    return text.splitlines()


class ParseError(Exception):
    """Stands for aiohttp's parser errors, whose message quotes the raw request."""


def parse(raw: str) -> None:
    raise ParseError(f"bad request line: {raw!r}")


def handle(raw: str) -> None:
    try:
        parse(raw)
    except ParseError as exc:
        raise RuntimeError(f"while handling Authorization: Bearer {TOKEN}") from exc


def log_chained(link: str) -> None:
    """An exception chain whose every message holds a secret, logged with its traceback:
    `raise ... from` (cause) or an exception raised while handling another (context)."""
    try:
        if link == "cause":
            handle(SECRET)
        else:
            try:
                parse(SECRET)
            except ParseError:
                empty: dict[str, str] = {}
                empty[f"Bearer {TOKEN}"]  # a KeyError quoting its key, raised while handling
    except (RuntimeError, KeyError):
        logging.getLogger("toolgate.test").exception("call failed for %s", "req_1")


def test_json_is_one_object_per_line_in_a_fixed_shape() -> None:
    out = configured("json")
    logging.getLogger("toolgate").info("listening on %s", "127.0.0.1:8080")
    logging.getLogger("toolgate.http").warning("refused a request")
    first, second = (json.loads(line) for line in lines(out))
    assert list(first) == ["timestamp", "level", "logger", "message"]
    assert RFC3339_UTC.fullmatch(first["timestamp"])
    assert first | {"timestamp": None} == {"timestamp": None, "level": "info",
                                           "logger": "toolgate",
                                           "message": "listening on 127.0.0.1:8080"}
    assert (second["level"], second["logger"]) == ("warning", "toolgate.http")


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("link", ["cause", "context"])
def test_an_exception_is_its_types_and_frames_on_the_same_line_never_its_message(
        fmt: str, link: str) -> None:
    out = configured(fmt)
    log_chained(link)
    [line] = lines(out)
    assert TOKEN not in line and SECRET not in line
    assert "eyJ" not in line and "bad request line" not in line, "no part of a message"
    outer = "RuntimeError" if link == "cause" else "KeyError"
    if fmt == "json":
        record = json.loads(line)
        assert record["message"] == "call failed for req_1"
        assert record["exception"]["types"] == [outer, "ParseError"]
        frames = record["exception"]["frames"]
        assert frames[0].startswith(f"{__file__}:") and frames[0].endswith(" in log_chained")
        assert frames[-1].endswith(" in handle" if link == "cause" else " in log_chained")
    else:
        found = CONSOLE.fullmatch(line)
        assert found is not None, line
        assert found[5].startswith(f"call failed for req_1 exception={outer}<-ParseError at ")
        assert f"{__file__}:" in line and " in log_chained" in line


def test_the_standard_formatter_would_have_leaked() -> None:
    """The control: the same chain through logging's own formatter shows the token and
    spans lines — what the tests above prove the gateway's formatter prevents."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().handlers[:] = [handler]
    log_chained("cause")
    assert TOKEN in out.getvalue() and SECRET in out.getvalue()
    assert out.getvalue().count("\n") > 5


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_message_cannot_add_a_line(fmt: str) -> None:
    """What a message quotes (a path, a header) cannot start a forged line."""
    out = configured(fmt)
    forged = '\n{"level":"info","message":"forged"}\r\nINFO toolgate: forged'
    logging.getLogger("toolgate").warning("odd path %s", forged)
    [line] = lines(out)
    assert "forged" in line


def test_console_is_one_readable_line_naming_the_worker() -> None:
    out = configured("console", worker=2)
    logging.getLogger("toolgate").info("toolgate listening on %s", "127.0.0.1:8080")
    [line] = lines(out)
    found = CONSOLE.fullmatch(line)
    assert found is not None, line
    assert RFC3339_UTC.fullmatch(found[1])
    assert found.group(2, 3, 4, 5) == ("INFO", "toolgate", " worker=2",
                                       "toolgate listening on 127.0.0.1:8080")


def test_json_names_the_worker_and_the_supervisor() -> None:
    out = configured("json", worker=3)
    logging.getLogger("toolgate").info("hello")
    record = json.loads(lines(out)[0])
    assert (record["process"], record["worker"]) == ("worker", 3)
    out = configured("json", supervisor=True)
    logging.getLogger("toolgate").info("hello")
    record = json.loads(lines(out)[0])
    assert record["process"] == "supervisor" and "worker" not in record


def test_aiohttps_loggers_come_out_the_same_way() -> None:
    out = configured("json")
    try:
        parse(f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n")
    except ParseError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    logging.getLogger("aiohttp.access").info("access")
    first, second = (json.loads(line) for line in lines(out))
    assert (first["logger"], first["exception"]["types"]) == ("aiohttp.server", ["ParseError"])
    assert second["logger"] == "aiohttp.access"
    assert TOKEN not in out.getvalue()


def test_log_level_sets_the_root_level_for_every_logger() -> None:
    out = configured("json", level="warning")
    logging.getLogger("toolgate").info("not shown")
    logging.getLogger("aiohttp.web").info("not shown either")
    logging.getLogger("toolgate").warning("shown")
    assert [json.loads(line)["message"] for line in lines(out)] == ["shown"]
    out = configured("json", level="debug")
    logging.getLogger("toolgate").debug("details")
    assert json.loads(lines(out)[0])["level"] == "debug"


def test_auto_is_json_unless_the_stream_is_a_terminal() -> None:
    configure_logging(LogSettings(format="auto"), stream=io.StringIO())
    [handler] = logging.getLogger().handlers
    assert isinstance(handler.formatter, SafeFormatter)
    assert handler.formatter.format_name == "json"
    controller, terminal = os.openpty()
    with open(terminal, "w", encoding="utf-8") as tty:   # noqa: PTH123 (a descriptor)
        configure_logging(LogSettings(format="auto"), stream=tty)
        [handler] = logging.getLogger().handlers
        assert isinstance(handler.formatter, SafeFormatter)
        assert handler.formatter.format_name == "console"
    os.close(controller)


def test_a_record_that_cannot_be_formatted_is_one_line_without_its_arguments() -> None:
    """logging's own report of a bad record quotes the message and its arguments over many
    lines; the gateway's handler says one line instead."""
    out = configured("json")
    logging.getLogger("toolgate").info("expects a number: %d", f"Bearer {TOKEN}")
    [line] = lines(out)
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["message"].startswith("a log record could not be formatted (at ")
    assert TOKEN not in line


PASSWORD = "pw:hunter2"   # short: asyncio's repr of an argument shows it whole


def fail(argument: str) -> None:
    raise ValueError(f"rejected {argument}")


def unhandled(new_loop: Callable[[], asyncio.AbstractEventLoop], handled: bool) -> None:
    """Two errors nobody handles, each holding a secret in its message and, for the
    callback, in its argument: asyncio reports them to the loop's exception handler."""
    async def task_fails() -> None:
        raise RuntimeError(f"upstream said {SECRET}")

    async def main() -> None:
        if handled:
            asyncio.get_running_loop().set_exception_handler(loop_exception)
        asyncio.get_running_loop().call_soon(fail, PASSWORD)
        task = asyncio.create_task(task_fails(), name="settle req_1")
        await asyncio.wait({task})   # done, its exception never retrieved
        del task
        gc.collect()                 # "Task exception was never retrieved"

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("new_loop", LOOPS)
def test_the_loops_reports_of_unhandled_errors_never_hold_a_message(
        new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """`toolgate serve` installs `loop_exception`: asyncio's message up to its first
    `repr()`, the task's name, and the exception's types and frames. The control: asyncio's
    own handler puts the exception's and the argument's `repr()` in the message itself,
    past any formatter."""
    out = configured("json")
    unhandled(new_loop, handled=False)
    assert SECRET in out.getvalue(), "the default leaks"
    assert (PASSWORD in out.getvalue()) is (new_loop is asyncio.new_event_loop)

    out = configured("json")
    unhandled(new_loop, handled=True)
    assert SECRET not in out.getvalue() and "hunter2" not in out.getvalue()
    assert "rejected" not in out.getvalue() and "upstream said" not in out.getvalue()
    callback, task = (json.loads(line) for line in lines(out))
    assert callback["logger"] == "asyncio" and callback["level"] == "error"
    assert callback["message"].startswith("Exception in callback")
    assert callback["exception"]["types"] == ["ValueError"]
    assert callback["exception"]["frames"][-1].endswith(" in fail")
    assert task["message"] == "Task exception was never retrieved (task settle req_1)"
    assert task["exception"]["types"] == ["RuntimeError"]
