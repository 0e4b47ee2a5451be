"""The open-file watch: one ERROR when the process nears its open-file limit, one INFO
when there is room again. (Making room at start is tested end to end, in
tests/e2e/test_attacks.py.)"""

from __future__ import annotations

import logging

import pytest

from gateway.open_files import OpenFiles


def test_running_short_of_open_files_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    used = [100]

    def count() -> int:
        if used[0] < 0:
            raise OSError(24, "Too many open files")
        return used[0]

    watch = OpenFiles(1000, count)
    with caplog.at_level(logging.INFO, logger="toolgate"):
        watch.check()
        assert caplog.records == []
        used[0] = 990
        watch.check()
        watch.check()
        assert [r.levelname for r in caplog.records] == ["ERROR"]
        assert "990 of the limit 1000" in caplog.records[0].getMessage()
        used[0] = 100
        watch.check()
        assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
        used[0] = -1   # at the limit, even counting fails
        watch.check()
        assert [r.levelname for r in caplog.records] == ["ERROR", "INFO", "ERROR"]
