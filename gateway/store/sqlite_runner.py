"""How the SQLite store's operations reach the database: on the event loop, in shared
transactions, and on a thread only when they must wait.

A call's store work takes tens of microseconds, less than handing it to a thread and back
(the hand-off, and the GIL changing hands twice, cost more than the work); so operations run
on the event loop, on a connection of the loop's:

- a read (`read`) runs at once, outside any transaction;
- a change on a call's hot path (`write`: a key, a budget, a settled answer) joins the
  changes asked for in the same turn of the loop, and one `BEGIN IMMEDIATE … COMMIT`
  carries them all (group commit): the commit — the WAL write, most of a small
  transaction's cost — is paid once per turn, not once per call. Each change runs in a
  savepoint of its own, so one that raises (a budget exceeded) is rolled back alone, and
  each caller gets its own result only after the commit: nothing acts on a change that is
  not committed. A turn's changes run in the order they were asked for, as they would one
  after another (each caller awaits its own, so a call's changes keep their order); one
  whose caller has already gone (cancelled) is not run;
- a change that writes an audit record before it commits (`write_alone`: a held call, a
  vote, a kill switch) runs at once in a transaction of its own: its record is write-ahead,
  and whether it commits must not depend on another change failing the shared transaction
  (a full disk fails them all);
- a change that may take long (`in_background`: purges, expiry) runs on the store's worker
  thread, in a transaction of its own, so it never holds the loop.

The loop's connection does not wait for a lock: when another connection holds the write
lock (another `--workers` process, the CLI), a turn refused it is tried again every
`RETRY_AFTER_S` for up to `RETRY_FOR_S` (the loop serves other calls meanwhile); then its
changes run one by one on the store's worker thread, in a transaction each, on a connection
that waits for the lock up to `BUSY_TIMEOUT_S`. A turn that waits may commit after a later
one. Only a change refused at `BEGIN` — before anything ran — is tried again or sent on, so
nothing runs twice. (A read takes no lock in WAL mode; one refused all the same is
`StoreUnavailable`.)

With `synchronous=NORMAL` a commit is a `write(2)` to the WAL; checkpoints, which copy the
WAL into the database and `fsync`, never run on the loop: its connection does not
checkpoint, and every `CHECKPOINT_EVERY` commits the thread runs a passive one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gateway.core.errors import StoreUnavailable

log = logging.getLogger("toolgate")
T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0     # how long the thread's connection waits for another's write lock
CHECKPOINT_EVERY = 500   # commits on the loop between two passive checkpoints
MAX_BATCH = 128          # changes in one shared transaction, at most
RETRY_AFTER_S = 0.0005   # a turn refused the write lock tries again after this…
RETRY_FOR_S = 0.05       # …for this long, then each of its changes waits on the thread
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

Change = Callable[[sqlite3.Connection], Any]


class Runner:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._thread_conn: sqlite3.Connection | None = None  # the thread's: waits for locks
        self._loop_conn: sqlite3.Connection | None = None    # the loop's: never waits
        self._loop_thread: int | None = None
        self._batch: list[tuple[Change, asyncio.Future[Any]]] | None = None
        self._waiting: set[asyncio.Task[None]] = set()   # changes sent to the thread
        self._commits = 0
        self._checkpointing = False
        self.closed = False

    async def open(self, migrate: Callable[[sqlite3.Connection], None]) -> None:
        """Open both connections; `migrate` runs on the thread's first."""
        def first() -> None:
            self._thread_conn = self._connect(BUSY_TIMEOUT_S)
            migrate(self._thread_conn)
        try:
            await self.on_thread(first)
            # It may wait while it is set up (another process may be migrating), not after.
            conn = self._connect(BUSY_TIMEOUT_S)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc
        self._loop_conn, self._loop_thread = conn, threading.get_ident()

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def connection(self) -> sqlite3.Connection:
        """The connection of the thread this runs on: the loop's, or the store thread's."""
        if self._loop_thread == threading.get_ident() and self._loop_conn is not None:
            return self._loop_conn
        if self._thread_conn is None:
            raise StoreUnavailable("the state store is not open")
        return self._thread_conn

    # -- reads and changes ------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` now, on the loop's connection; database errors become
        `StoreUnavailable`."""
        if self.closed:
            raise StoreUnavailable("the state store is closed")
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc

    async def write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change(conn)` inside a transaction, shared with this turn's other changes;
        its result (or what it raised) once that transaction is committed. For changes that
        write nothing outside the database."""
        if self.closed:
            raise StoreUnavailable("the state store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        if self._batch is None or len(self._batch) >= MAX_BATCH:
            self._batch = []
            loop.call_soon(self._commit, self._batch)
        self._batch.append((change, done))
        return await done

    async def write_alone(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change(conn)` now, in a transaction of its own."""
        conn = self._loop_conn
        if self.closed or conn is None:
            raise StoreUnavailable("the state store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if _busy(exc):
                return await self.on_thread(self._alone, change)
            raise unavailable(exc) from exc
        try:
            result = change(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise unavailable(exc) from exc
            raise
        self._committed()
        return result

    async def in_background(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run `change(conn)` on the store's thread, in a transaction of its own."""
        return await self.on_thread(self._alone, change)

    def _alone(self, change: Callable[[sqlite3.Connection], T]) -> T:
        with self.transaction() as conn:
            return change(conn)

    def _commit(self, batch: list[tuple[Change, asyncio.Future[Any]]],
                busy_since: float | None = None) -> None:
        if self._batch is batch:
            self._batch = None
        batch = [(change, done) for change, done in batch if not done.done()]
        if not batch:
            return
        conn = self._begin(batch, busy_since)
        if conn is None:
            return
        try:
            outcomes = [self._change(conn, change) for change, _ in batch]
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the turn is kept, and every caller hears it: none is left waiting.
            self._rollback(conn)
            _fail(batch, unavailable(exc) if isinstance(exc, sqlite3.Error)
                  else StoreUnavailable("the state store failed; nothing was changed"))
            if not isinstance(exc, sqlite3.Error):
                raise
            return
        for (_, done), (result, error) in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)
        self._committed()

    def _committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._checkpoint()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Leave no transaction open: it would hold the write lock for good. If even the
        rollback fails, the connection is closed (which releases the lock), and every
        operation after is `StoreUnavailable`: readiness fails and the gateway is replaced."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            log.critical("state store: a rollback failed; closing the connection")
            self._loop_conn = None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _begin(self, batch: list[tuple[Change, asyncio.Future[Any]]],
               busy_since: float | None) -> sqlite3.Connection | None:
        """The loop's connection in a new transaction; else None, the changes sent on: tried
        again shortly while another holds the lock (another worker's transaction takes well
        under a millisecond), then each on the thread, which waits for it."""
        conn = self._loop_conn
        if self.closed or conn is None:
            _fail(batch, StoreUnavailable("the state store is closed"))
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if _busy(exc) and now - (busy_since or now) < RETRY_FOR_S:
                loop.call_later(RETRY_AFTER_S, self._commit, batch, busy_since or now)
            elif _busy(exc):
                for change, done in batch:   # nothing ran: each waits for the lock
                    task = asyncio.ensure_future(self._wait_for_lock(change, done))
                    self._waiting.add(task)
                    task.add_done_callback(self._waiting.discard)
            else:
                _fail(batch, unavailable(exc))
            return None
        return conn

    @staticmethod
    def _change(conn: sqlite3.Connection, change: Change) -> tuple[Any, Exception | None]:
        """One change in a savepoint of its own: what it raised undoes it alone. If even that
        fails (SQLite gave up the transaction), the error escapes and all is rolled back."""
        conn.execute("SAVEPOINT change")
        try:
            result = change(conn)
        except Exception as exc:   # noqa: BLE001 - handed to its caller
            conn.execute("ROLLBACK TO change")
            conn.execute("RELEASE change")
            return None, unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
        conn.execute("RELEASE change")
        return result, None

    async def _wait_for_lock(self, change: Change, done: asyncio.Future[Any]) -> None:
        if done.done():   # its caller is gone: not run
            return
        try:
            result = await self.on_thread(self._alone, change)
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not done.done():
                done.set_result(result)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction of its own, on this thread's connection (migrations, and the
        changes that had to wait for the lock)."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT too: never leave the connection inside a transaction.
            if conn.in_transaction:
                conn.rollback()
            raise

    async def on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self.closed:
            raise StoreUnavailable("the state store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc

    def _checkpoint(self) -> None:
        """A passive checkpoint on the thread, not awaited: it copies what it can of the WAL
        into the database while writers go on, and keeps the WAL from growing."""
        self._commits, self._checkpointing = 0, True

        def checkpoint() -> None:
            try:
                self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, StoreUnavailable) as exc:
                log.warning("state store checkpoint failed: %s", exc)
            finally:
                self._checkpointing = False
        self._executor.submit(checkpoint)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._batch is not None:
            _fail(self._batch, StoreUnavailable("the state store is closed"))
            self._batch = None
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

        def shut() -> None:
            if self._thread_conn is not None:
                self._thread_conn.close()
                self._thread_conn = None
        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in _BUSY


def _fail(batch: list[tuple[Change, asyncio.Future[Any]]], error: BaseException) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(error)


def unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    # SECURITY: the driver's text is for the operator's log (see postgres.py).
    log.warning("state store unavailable: %s: %s", type(exc).__name__, exc)
    return StoreUnavailable(f"state store unavailable ({type(exc).__name__})")
