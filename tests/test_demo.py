"""The demo logs as `toolgate serve` does: exceptions without their messages. (The demo
itself runs end to end in tests/e2e/test_cli.py.)"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import demo


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_demo_never_logs_an_exception_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        root_logging: None) -> None:
    def fail() -> None:
        raise ValueError("Authorization: Bearer eyJ-canary")

    def run(coro: Coroutine[Any, Any, int]) -> int:
        coro.close()
        try:
            fail()
        except ValueError:
            logging.getLogger("toolgate").exception("the gateway failed")
        return 0

    monkeypatch.setattr(demo.uvloop, "run", run)
    assert demo.run_demo(tmp_path / "demo") == 0
    err = capsys.readouterr().err
    assert "the gateway failed" in err and "ValueError" in err
    assert "eyJ-canary" not in err
