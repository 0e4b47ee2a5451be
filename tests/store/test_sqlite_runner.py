"""The SQLite store runs its operations on the event loop's own connection, which never
waits for a lock; the changes of one loop turn share one transaction (group commit), each in
a savepoint of its own. While another connection (another `--workers` process, the CLI)
holds the write lock, changes run on the store's thread instead, whose connection waits.
Nothing runs twice, and the loop never stalls on a lock or a checkpoint."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.core.errors import BudgetExceeded, StoreUnavailable
from gateway.state.budgets import Limits, Reservation
from gateway.state.idempotency import KeyClaim, KeyState, Scope
from gateway.store import sqlite_runner
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
    monkeypatch.setattr(sqlite_runner, "CHECKPOINT_EVERY", 10)
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    try:
        for i in range(10):   # one at a time: ten commits
            await store.commit_forward(None, reservation(f"run-{i}"), 1.0)
        await store._db.on_thread(lambda: None)   # the checkpoint queued before it is done
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


def claim(key: str, request_id: str) -> KeyClaim:
    return KeyClaim(Scope("acme", "t", key), "fingerprint", request_id, 1e10, "hash")


async def test_the_changes_of_one_turn_share_one_commit(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)
    try:
        taken = await asyncio.gather(
            *(store.commit_forward(claim(f"k-{i}", f"req-{i}"), reservation(), 1.0)
              for i in range(20)),
            store.commit_forward(claim("k-0", "req-again"), None, 1.0),
            return_exceptions=True)
    finally:
        store._db.connection().set_trace_callback(None)
        await store.close()
    assert statements.count("COMMIT") == 1
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert taken[:20] == [None] * 20
    # The 21st asked for a key the first took in the same transaction: it sees it taken.
    assert isinstance(taken[20], KeyState) and taken[20].request_id == "req-0"


async def test_a_change_that_raises_is_undone_alone(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        results = await asyncio.gather(
            *(store.commit_forward(claim(f"k-{i}", f"req-{i}"), reservation(calls=3), 1.0)
              for i in range(5)), return_exceptions=True)
        assert results[:3] == [None, None, None]
        assert all(isinstance(r, BudgetExceeded) for r in results[3:])
        assert (await store.usage("acme", "run-1")).tool_calls == 3
        # The refused ones took no key either: their savepoints were rolled back.
        assert await store.key_state(Scope("acme", "t", "k-4")) is None
        assert await store.key_state(Scope("acme", "t", "k-2")) is not None
    finally:
        await store.close()


async def test_a_change_whose_caller_is_gone_is_not_run(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        gone = asyncio.create_task(store.commit_forward(None, reservation("run-gone"), 1.0))
        kept = asyncio.create_task(store.commit_forward(None, reservation("run-kept"), 1.0))
        await asyncio.sleep(0)     # both have asked; the shared commit has not run yet
        gone.cancel()
        assert await kept is None
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (await store.usage("acme", "run-kept")).tool_calls == 1
        assert (await store.usage("acme", "run-gone")).tool_calls == 0
    finally:
        await store.close()


async def test_changes_asked_for_after_close_are_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    pending = asyncio.create_task(store.commit_forward(None, reservation(), 1.0))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await pending
    with pytest.raises(StoreUnavailable):
        await store.commit_forward(None, reservation(), 1.0)


async def test_two_stores_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    stores = await asyncio.gather(SqliteStore.open(path), SqliteStore.open(path))
    try:
        assert await stores[0].commit_forward(None, reservation(), 1.0) is None
        assert (await stores[1].usage("acme", "run-1")).tool_calls == 1
    finally:
        for store in stores:
            await store.close()


class _Crash(BaseException):
    """What no change should raise (a bug, an interrupt): it must not leave anything open."""


async def test_a_change_that_crashes_fails_its_turn_and_leaves_no_lock(tmp_path: Path) -> None:
    runner = sqlite_runner.Runner(tmp_path / "r.db")
    await runner.open(lambda conn: conn.execute("CREATE TABLE t (x)"))
    seen: list[BaseException] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: seen.append(context["exception"]))

    def good(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (1)")
        return "ok"

    def crash(conn: sqlite3.Connection) -> str:
        raise _Crash
    try:
        results = await asyncio.gather(runner.write(good), runner.write(crash),
                                       return_exceptions=True)
        # Every caller of the turn hears it; nothing of the turn is kept.
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert [type(e) for e in seen] == [_Crash]
        other = sqlite3.connect(tmp_path / "r.db", timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")   # the write lock was let go
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
            other.rollback()
        finally:
            other.close()
        assert await runner.write(good) == "ok"   # and the store goes on
    finally:
        await runner.close()


async def test_a_change_with_a_record_commits_alone(tmp_path: Path) -> None:
    """A change that wrote its audit record before committing never shares a transaction
    that another change can fail (here: the disk is full for the other one)."""
    runner = sqlite_runner.Runner(tmp_path / "r.db")
    await runner.open(lambda conn: conn.execute("CREATE TABLE t (x)"))
    recorded: list[str] = []

    def held(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('held')")
        recorded.append("held")   # the write-ahead record
        return "held"

    def too_big(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 3")
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    try:
        results = await asyncio.gather(runner.write(too_big), runner.write_alone(held),
                                       return_exceptions=True)
        assert isinstance(results[0], StoreUnavailable)
        assert results[1] == "held" and recorded == ["held"]
        rows = await runner.read(lambda: runner.connection().execute(
            "SELECT x FROM t").fetchall())
        assert rows == [("held",)]
    finally:
        await runner.close()


async def test_long_changes_run_on_the_thread(tmp_path: Path) -> None:
    runner = sqlite_runner.Runner(tmp_path / "r.db")
    await runner.open(lambda conn: conn.execute("CREATE TABLE t (x)"))
    try:
        where = await runner.in_background(lambda conn: (
            conn.execute("INSERT INTO t VALUES (1)"), threading.get_ident())[1])
        assert where != threading.get_ident()
        assert await runner.read(lambda: runner.connection().execute(
            "SELECT count(*) FROM t").fetchone()[0]) == 1
    finally:
        await runner.close()


async def test_a_turn_refused_the_lock_for_a_moment_tries_again_on_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker's transaction holds the lock for less than `RETRY_FOR_S`: the turn
    is tried again on the loop and its changes still share one commit."""
    monkeypatch.setattr(sqlite_runner, "RETRY_FOR_S", 10.0)   # a slow machine stays "brief"
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)
    try:
        other.execute("BEGIN IMMEDIATE")
        writes = asyncio.gather(*(store.commit_forward(None, reservation(), 1.0)
                                  for _ in range(5)))
        await asyncio.sleep(0.005)
        other.execute("COMMIT")
        assert await writes == [None] * 5
        assert statements.count("COMMIT") == 1      # on the loop's connection, all five
        assert (await store.usage("acme", "run-1")).tool_calls == 5
    finally:
        store._db.connection().set_trace_callback(None)
        other.close()
        await store.close()
