"""The SQLite state file holds every held call's exact arguments: it is created owner-only,
and so are the journal files SQLite makes beside it (THREAT_MODEL Q4)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.state.budgets import Limits, Reservation
from gateway.store.sqlite import SqliteStore


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away, so only the store's own mode can make a file
    owner-only (the default 022 would still let every local user read it)."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
async def test_the_state_file_and_its_journal_are_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "toolgate.db"
    store = await SqliteStore.open(path)
    try:
        # A write, so the write-ahead log and its index are there too.
        await store.commit_forward(None, Reservation("acme", "run-1", "t", {},
                                                     Limits(max_tool_calls=5)), 0.0)
        files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        await store.close()
    assert files == {"toolgate.db": 0o600, "toolgate.db-wal": 0o600,
                     "toolgate.db-shm": 0o600}
