"""The SQLite state store: the embedded default, for one gateway (and its `--workers`).

Every operation is one plain function that runs whole, each change one `BEGIN IMMEDIATE`
transaction, so operations never interleave. They run on the event loop itself, on a
connection of the loop's: a call's store work takes tens of microseconds, less than handing
it to a thread and back (the hand-off, and the GIL changing hands twice, cost more than the
work). That connection never waits: when another connection holds the write lock (another
`--workers` process, a checkpoint, the CLI), the operation runs instead on the store's one
worker thread, whose connection waits for the lock up to `BUSY_TIMEOUT_S`. Only an operation
refused at `BEGIN` — before it did anything — goes to the thread, so nothing runs twice.

The WAL journal runs with `synchronous=NORMAL`: a commit is a `write(2)` to the WAL, and
survives the gateway being killed (the SIGKILL tests), though the last commits may be lost
if the machine loses power. The checkpoints, which copy the WAL into the database and
`fsync`, never run on the loop: its connection does not checkpoint, and every
`CHECKPOINT_EVERY` operations the thread runs a passive checkpoint. In the sidecar deployment
the state lives on the pod's emptyDir, which does not outlive the node anyway; where it
must, use PostgreSQL. Schema changes are the numbered migrations of `gateway.store.schema`,
recorded in `PRAGMA user_version` and applied at start.

Its size is earned: it is the whole `StateStore` protocol for one dialect, one short
method per operation; the statements and row codecs it shares with PostgreSQL are in
`gateway.store.rows`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.approvals.model import Approval, ApprovalStatus, Vote
from gateway.core.errors import StoreUnavailable
from gateway.state.budgets import Reservation, Usage, check_reservation, release
from gateway.state.budgets import usage_from_json as _usage
from gateway.state.budgets import usage_to_json as _usage_json
from gateway.state.idempotency import (
    Answer,
    KeyClaim,
    KeyState,
    KeyStatus,
    Scope,
    may_take_over,
)
from gateway.state.killswitch import KillSwitch
from gateway.store import rows
from gateway.store.base import ApprovalHook
from gateway.store.schema import Dialect, migrations

MIGRATIONS = migrations(Dialect.SQLITE)
log = logging.getLogger("toolgate")
T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0     # how long the thread's connection waits for another's write lock
CHECKPOINT_EVERY = 500   # operations on the loop between two passive checkpoints


class _Busy(Exception):
    """The loop's connection was refused the write lock before it did anything."""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None    # the thread's: waits for locks
        self._loop_conn: sqlite3.Connection | None = None  # the loop's: never waits
        self._loop_thread: int | None = None
        self._operations = 0
        self._checkpointing = False
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: queued calls hold their exact arguments; owner-only. SQLite gives its
        # -wal and -shm files the database file's permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        store = cls(path)
        try:
            await store._on_thread(store._open)
            store._open_loop_connection()
        except sqlite3.Error as exc:
            await store.close()
            raise StoreUnavailable(f"state store unavailable ({type(exc).__name__})") from exc
        except StoreUnavailable:
            await store.close()
            raise
        return store

    def _open(self) -> None:
        conn = self._connect(BUSY_TIMEOUT_S)
        self._conn = conn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"state store schema version {version} is newer than this "
                                   f"gateway ({len(MIGRATIONS)})")
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._tx() as tx:
                for sql in step:
                    tx.execute(sql)
                tx.execute(f"PRAGMA user_version = {number}")

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _open_loop_connection(self) -> None:
        """The loop's own connection, opened on the loop's thread once the schema is there.
        It never waits for a lock and never checkpoints (a checkpoint `fsync`s)."""
        conn = self._connect(0)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._loop_conn, self._loop_thread = conn, threading.get_ident()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the loop's connection, or on the thread's when the loop's was refused
        the write lock; database errors become `StoreUnavailable`."""
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        try:
            try:
                result = fn(*args)
            except _Busy:
                return await self._on_thread(fn, *args)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        self._operations += 1
        if self._operations >= CHECKPOINT_EVERY and not self._checkpointing:
            self._checkpoint()
        return result

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def _checkpoint(self) -> None:
        """A passive checkpoint on the thread, not awaited: it copies what it can of the WAL
        into the database while writers go on, and keeps the WAL from growing."""
        self._operations, self._checkpointing = 0, True

        def checkpoint() -> None:
            try:
                self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
            except (sqlite3.Error, StoreUnavailable) as exc:
                log.warning("state store checkpoint failed: %s", exc)
            finally:
                self._checkpointing = False
        self._executor.submit(checkpoint)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if conn is self._loop_conn and exc.sqlite_errorcode & 0xFF in _BUSY:
                raise _Busy from exc   # nothing was done: the thread's connection waits
            raise
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT too: never leave the connection inside a transaction.
            if conn.in_transaction:
                conn.rollback()
            raise

    def _connection(self) -> sqlite3.Connection:
        """The connection of the thread this runs on: the loop's, or the store thread's."""
        if self._loop_thread == threading.get_ident() and self._loop_conn is not None:
            return self._loop_conn
        if self._conn is None:
            raise StoreUnavailable("the state store is not open")
        return self._conn

    async def ping(self) -> None:
        await self._run(lambda: self._connection().execute("SELECT 1"))

    # -- a call's transactions ---------------------------------------------------------------

    def _key_in(self, conn: sqlite3.Connection, scope: Scope) -> KeyState | None:
        row = conn.execute(rows.SELECT_KEY, rows.scope_params(scope)).fetchone()
        if row is None:
            return None
        approval_id = row[len(rows.KEY_COLUMNS) - 1]
        return rows.key_from_row(tuple(row), _votes_in(conn, [approval_id]).get(approval_id, ())
                                 if approval_id is not None else ())

    async def key_state(self, scope: Scope) -> KeyState | None:
        return await self._run(lambda: self._key_in(self._connection(), scope))

    def _claim_in(self, conn: sqlite3.Connection, claim: KeyClaim, status: KeyStatus,
                  approval_id: str | None, now: float) -> KeyState | None:
        """Take the key for `claim`; the state that keeps it from us, if any."""
        inserted = conn.execute(rows.INSERT_KEY, (
            *rows.scope_params(claim.scope), claim.fingerprint, claim.request_id, str(status),
            claim.lease_until, now, approval_id, now)).rowcount
        if inserted == 1:
            return None
        existing = self._key_in(conn, claim.scope)
        if existing is None:  # pragma: no cover - one writer at a time: it cannot vanish
            raise StoreUnavailable("the idempotency key vanished while being claimed")
        if not may_take_over(existing, claim, now):
            return existing
        conn.execute(rows.TAKE_OVER_KEY, (claim.request_id, str(status), claim.lease_until,
                                          approval_id, now, *rows.scope_params(claim.scope)))
        return None

    def _reserve_in(self, conn: sqlite3.Connection, r: Reservation, now: float) -> None:
        usage = check_reservation(self._usage_in(conn, r.tenant, r.run_id), r.limits, r.tool,
                                  r.spend)
        conn.execute(rows.UPSERT_USAGE, (r.tenant, r.run_id, _usage_json(usage), now))

    async def commit_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                             now: float) -> KeyState | None:
        def commit() -> KeyState | None:
            with self._tx() as conn:
                if claim is not None:
                    taken = self._claim_in(conn, claim, KeyStatus.IN_FLIGHT, None, now)
                    if taken is not None:
                        return taken
                if reservation is not None:
                    self._reserve_in(conn, reservation, now)  # raises: all rolls back
                return None
        return await self._run(commit)

    async def commit_hold(self, approval: Approval, claim: KeyClaim | None,
                          record: ApprovalHook) -> KeyState | None:
        def hold() -> KeyState | None:
            with self._tx() as conn:
                if claim is not None:
                    taken = self._claim_in(conn, claim, KeyStatus.HELD, approval.id,
                                           approval.created_at)
                    if taken is not None:
                        return taken
                conn.execute(rows.INSERT_APPROVAL, rows.approval_row(approval))
                record(approval)  # write-ahead: if the audit record fails, nothing commits
                return None
        return await self._run(hold)

    async def settle(self, claim: KeyClaim, answer: Answer, now: float) -> None:
        def settle() -> None:
            with self._tx() as conn:
                conn.execute(rows.COMPLETE_KEY, (
                    answer.status, answer.content_type, answer.body, now,
                    *rows.scope_params(claim.scope), claim.request_id))
        await self._run(settle)

    async def undo_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                           now: float) -> None:
        def undo() -> None:
            with self._tx() as conn:
                if claim is not None:
                    conn.execute(rows.RELEASE_KEY, (*rows.scope_params(claim.scope),
                                                    claim.request_id))
                if reservation is not None:
                    r = reservation
                    usage = release(self._usage_in(conn, r.tenant, r.run_id), r.spend, r.tool)
                    conn.execute(rows.UPSERT_USAGE, (r.tenant, r.run_id, _usage_json(usage),
                                                     now))
        await self._run(undo)

    async def purge_runs(self, before: float) -> int:
        def purge() -> int:
            with self._tx() as conn:
                return int(conn.execute(rows.PURGE_RUNS, (before,)).rowcount)
        return await self._run(purge)

    async def purge_keys(self, before: float) -> int:
        def purge() -> int:
            with self._tx() as conn:
                return int(conn.execute(rows.PURGE_KEYS, (before, before)).rowcount)
        return await self._run(purge)

    @staticmethod
    def _usage_in(conn: sqlite3.Connection, tenant: str, run_id: str) -> Usage:
        row = conn.execute(rows.SELECT_USAGE, (tenant, run_id)).fetchone()
        return _usage(row[0] if row else None)

    async def usage(self, tenant: str, run_id: str) -> Usage:
        return await self._run(lambda: self._usage_in(self._connection(), tenant, run_id))

    # -- the approval queue ------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[Approval]:
        conn = self._connection()
        found = [tuple(r) for r in conn.execute(f"{rows.SELECT_APPROVALS}{where}",
                                                params).fetchall()]
        votes = _votes_in(conn, [r[0] for r in found])
        return [rows.approval_from_row(r, votes.get(r[0], ())) for r in found]

    async def get_approval(self, approval_id: str) -> Approval | None:
        found = await self._run(self._select, " WHERE id = ?", (approval_id,))
        return found[0] if found else None

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]:
        where, params = rows.list_filter(status, tool, tenant, limit)
        return await self._run(self._select, where, params)

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]:
        marks = ", ".join("?" * len(states))
        return await self._run(self._select, f" WHERE status IN ({marks}) ORDER BY created_at",
                               tuple(sorted(str(s) for s in states)))

    def _get_in(self, conn: sqlite3.Connection, approval_id: str) -> Approval:
        row = conn.execute(f"{rows.SELECT_APPROVALS} WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise KeyError(approval_id)
        return rows.approval_from_row(tuple(row), _votes_in(conn, [approval_id])[approval_id])

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        def vote() -> Approval:
            with self._tx() as conn:
                current = self._get_in(conn, approval_id)
                check(current)  # raises a GatewayError to refuse: the transaction rolls back
                conn.execute(rows.INSERT_VOTE, (approval_id, str(approver["sub"]),
                                                orjson.dumps(approver), comment, now))
                votes = conn.execute(rows.COUNT_VOTES, (approval_id,)).fetchone()[0]
                if votes >= current.approvals_required:
                    conn.execute(rows.MARK_APPROVED, (now, approval_id))
                after = self._get_in(conn, approval_id)
                record(after)  # write-ahead: if the audit record fails, nothing commits
                return after
        return await self._run(vote)

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         check: ApprovalHook | None = None,
                         **fields: Any) -> Approval | None:
        sql = rows.transition_sql(from_states, fields, owner_is)
        params = rows.transition_params(approval_id, from_states, to, now, fields, owner_is)

        def move() -> Approval | None:
            with self._tx() as conn:
                if check is not None:
                    check(self._get_in(conn, approval_id))  # raises: rolls back
                if conn.execute(sql, params).rowcount != 1:
                    return None
                after = self._get_in(conn, approval_id)
                if record is not None:
                    record(after)  # write-ahead: if the audit record fails, nothing commits
                return after
        return await self._run(move)

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        def expire() -> list[Approval]:
            with self._tx() as conn:
                ids = [r[0] for r in conn.execute(rows.EXPIRE_DUE, (now, now)).fetchall()]
                expired = [self._get_in(conn, i) for i in ids]
                for approval in expired:
                    record(approval)
                return expired
        return await self._run(expire)

    async def heartbeat(self, instance: str, now: float) -> None:
        def beat() -> None:
            with self._tx() as conn:
                conn.execute(rows.HEARTBEAT, (instance, now))
        await self._run(beat)

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        return await self._run(lambda: [
            rows.approval_from_row(tuple(r)) for r in self._connection().execute(
                rows.ABANDONED, (now - stale_s,)).fetchall()])

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch:
        switch = KillSwitch(scope, reason, dict(actor), now)

        def put() -> KillSwitch:
            with self._tx() as conn:
                conn.execute(rows.PUT_SWITCH, (scope, reason, rows.actor_json(actor), now))
                record(switch)
                return switch
        return await self._run(put)

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None:
        def clear() -> KillSwitch | None:
            with self._tx() as conn:
                row = conn.execute(rows.CLEAR_SWITCH, (scope,)).fetchone()
                if row is None:
                    return None
                switch = rows.switch_from_row(tuple(row))
                record(switch)
                return switch
        return await self._run(clear)

    async def kill_list(self) -> list[KillSwitch]:
        return await self._run(lambda: [rows.switch_from_row(tuple(r)) for r in
                                        self._connection().execute(rows.LIST_SWITCHES)])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    # SECURITY: the driver's text is for the operator's log (see postgres.py).
    log.warning("state store unavailable: %s: %s", type(exc).__name__, exc)
    return StoreUnavailable(f"state store unavailable ({type(exc).__name__})")


def _votes_in(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[Vote]]:
    out: dict[str, list[Vote]] = {i: [] for i in ids}
    if not ids:
        return out
    for approval_id, approver, comment, created in conn.execute(
            f"SELECT approval_id, approver, comment, created_at FROM approval_votes "
            f"WHERE approval_id IN ({', '.join('?' * len(ids))}) ORDER BY created_at",
            tuple(ids)).fetchall():
        out[approval_id].append(rows.vote_from_row(approver, comment, created))
    return out
