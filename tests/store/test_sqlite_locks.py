"""The SQLite store runs its operations on the event loop's own connection, which never
waits for a lock: while another connection (another `--workers` process, the CLI) holds
the write lock, an operation runs on the store's thread instead, whose connection waits.
Nothing runs twice, and the loop never stalls on a lock or a checkpoint."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.core.errors import BudgetExceeded
from gateway.state.budgets import Limits, Reservation
from gateway.store import sqlite as sqlite_store
from gateway.store.sqlite import SqliteStore


def reservation(run_id: str = "run-1", calls: int = 100) -> Reservation:
    return Reservation("acme", run_id, "t", {}, Limits(max_tool_calls=calls))


async def test_a_write_waits_on_the_thread_while_another_connection_holds_the_lock(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")     # another process's transaction, still open
        loop_ran: list[int] = []
        write = asyncio.create_task(store.commit_forward(None, reservation(), 1.0))
        # The loop is free meanwhile: other coroutines run while the write waits.
        for i in range(3):
            await asyncio.sleep(0.05)
            loop_ran.append(i)
        assert not write.done()
        other.execute("COMMIT")
        assert await write is None
        assert loop_ran == [0, 1, 2]
        assert (await store.usage("acme", "run-1")).tool_calls == 1   # counted once
    finally:
        other.close()
        await store.close()


async def test_a_refused_write_that_waited_still_refuses(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None,
                            check_same_thread=False)
    try:
        await store.commit_forward(None, reservation(calls=1), 1.0)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.1, other.execute, ("COMMIT",))
        release.start()
        with pytest.raises(BudgetExceeded):   # decided on the thread, after the wait
            await store.commit_forward(None, reservation(calls=1), 2.0)
        release.join()
        assert (await store.usage("acme", "run-1")).tool_calls == 1
    finally:
        other.close()
        await store.close()


async def test_checkpoints_copy_the_log_into_the_database(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 10)
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    try:
        for i in range(10):
            await store.commit_forward(None, reservation(f"run-{i}"), 1.0)
        await store._on_thread(lambda: None)   # the checkpoint queued before it is done
        # The database file alone, without its write-ahead log, has every run.
        alone = tmp_path / "copy.db"
        shutil.copy(path, alone)
        copied = sqlite3.connect(alone)
        try:
            assert copied.execute("SELECT count(*) FROM runs").fetchone()[0] == 10
        finally:
            copied.close()
    finally:
        await store.close()
