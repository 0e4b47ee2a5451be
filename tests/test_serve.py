"""`gateway.serve.SafeFormatter`: what `toolgate serve` logs of an exception is its types
and frames, never its message — a message can quote a client's token or body (THREAT_MODEL
U5)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gateway import serve
from gateway.serve import SafeFormatter

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzdmMtYWdlbnQifQ.c2lnbmF0dXJl"
SECRET = "upstream-secret-9f8e7d6c5b4a"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler formats with SafeFormatter into a string."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("toolgate.test_serve")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


class ParseError(Exception):
    """Stands for aiohttp's parser errors, whose message quotes the raw request."""


def parse(raw: str) -> None:
    raise ParseError(f"bad request line: {raw!r}")


def handle(raw: str) -> None:
    try:
        parse(raw)
    except ParseError as exc:
        raise RuntimeError(f"while handling Authorization: Bearer {TOKEN}") from exc


def test_an_exception_is_logged_as_its_type_and_frames_never_its_message(
        logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = logged
    try:
        parse(f"GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n")
    except ParseError:
        logger.exception("request refused")
    text = out.getvalue()
    assert text.startswith("ERROR toolgate.test_serve: request refused\n")
    assert "ParseError" in text
    assert f"{__file__}:" in text and " in parse" in text, "the frames are there"
    assert TOKEN not in text
    assert "eyJ" not in text
    assert "bad request line" not in text, "no part of the message"


@pytest.mark.parametrize("link", ["cause", "context"])
def test_every_exception_of_a_chain_is_named_and_none_is_quoted(
        logged: tuple[logging.Logger, io.StringIO], link: str) -> None:
    """`raise ... from` (cause) and an exception raised while handling another (context):
    each message in the chain may hold the secret; only their types are written."""
    logger, out = logged
    try:
        if link == "cause":
            handle(SECRET)
        else:
            try:
                parse(SECRET)
            except ParseError:
                {}[f"Bearer {TOKEN}"]  # a KeyError quoting its key, raised while handling
    except (RuntimeError, KeyError):
        logger.error("call failed", exc_info=True)
    text = out.getvalue()
    outer = "RuntimeError" if link == "cause" else "KeyError"
    assert f"{outer} <- ParseError" in text
    assert TOKEN not in text and SECRET not in text
    assert "eyJ" not in text


def test_the_standard_formatter_would_have_leaked(logged: tuple[logging.Logger, io.StringIO]
                                                  ) -> None:
    """The control: the same exception through logging's own formatter shows the token —
    what the tests above prove SafeFormatter prevents."""
    logger, out = logged
    logger.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    try:
        handle(SECRET)
    except RuntimeError:
        logger.exception("call failed")
    assert TOKEN in out.getvalue() and SECRET in out.getvalue()


def test_serve_logs_through_the_safe_formatter() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        serve.configure_logging()
        assert [type(h.formatter) for h in root.handlers] == [SafeFormatter]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
