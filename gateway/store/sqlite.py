"""The SQLite state store: the embedded default, for one gateway (and its `--workers`).

Every operation is one plain function that runs whole: a read at once, a change inside a
transaction, never interleaved with another. How they reach the database — on the event
loop, changes of one loop turn committed together, on a thread only when they must wait for
a lock — is `gateway.store.sqlite_runner`. The WAL journal runs with `synchronous=NORMAL`:
a commit survives the gateway being killed (the SIGKILL tests), though the last commits may
be lost if the machine loses power. In the sidecar deployment the state lives on the pod's
emptyDir, which does not outlive the node anyway; where it must, use PostgreSQL. Schema
changes are the numbered migrations of `gateway.store.schema`, recorded in
`PRAGMA user_version` and applied at start.

Its size is earned: it is the whole `StateStore` protocol for one dialect, one short
method per operation; the statements and row codecs it shares with PostgreSQL are in
`gateway.store.rows`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

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
from gateway.store.sqlite_runner import Runner

MIGRATIONS = migrations(Dialect.SQLITE)
log = logging.getLogger("toolgate")


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Runner(path)

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: queued calls hold their exact arguments; owner-only. SQLite gives its
        # -wal and -shm files the database file's permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        store = cls(path)
        try:
            await store._db.open(store._migrate)
        except StoreUnavailable:
            await store.close()
            raise
        return store

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # One transaction, the version read inside it: of two processes opening a new file
        # at once (`--workers`), the second waits, then finds it migrated.
        with self._db.transaction() as tx:
            version = int(tx.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StoreUnavailable(f"state store schema version {version} is newer than "
                                       f"this gateway ({len(MIGRATIONS)})")
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                for sql in step:
                    tx.execute(sql)
                tx.execute(f"PRAGMA user_version = {number}")

    def _connection(self) -> sqlite3.Connection:
        return self._db.connection()

    async def ping(self) -> None:
        await self._db.read(lambda: self._connection().execute("SELECT 1"))

    # -- a call's transactions ---------------------------------------------------------------

    def _key_in(self, conn: sqlite3.Connection, scope: Scope) -> KeyState | None:
        row = conn.execute(rows.SELECT_KEY, rows.scope_params(scope)).fetchone()
        if row is None:
            return None
        approval_id = row[len(rows.KEY_COLUMNS) - 1]
        return rows.key_from_row(tuple(row), _votes_in(conn, [approval_id]).get(approval_id, ())
                                 if approval_id is not None else ())

    async def key_state(self, scope: Scope) -> KeyState | None:
        return await self._db.read(lambda: self._key_in(self._connection(), scope))

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
        def commit(conn: sqlite3.Connection) -> KeyState | None:
            if claim is not None:
                taken = self._claim_in(conn, claim, KeyStatus.IN_FLIGHT, None, now)
                if taken is not None:
                    return taken
            if reservation is not None:
                self._reserve_in(conn, reservation, now)  # raises: the claim rolls back
            return None
        return await self._db.write(commit)

    async def commit_hold(self, approval: Approval, claim: KeyClaim | None,
                          record: ApprovalHook) -> KeyState | None:
        def hold(conn: sqlite3.Connection) -> KeyState | None:
            if claim is not None:
                taken = self._claim_in(conn, claim, KeyStatus.HELD, approval.id,
                                       approval.created_at)
                if taken is not None:
                    return taken
            conn.execute(rows.INSERT_APPROVAL, rows.approval_row(approval))
            record(approval)  # write-ahead: if the audit record fails, nothing commits
            return None
        return await self._db.write_alone(hold)

    async def settle(self, claim: KeyClaim, answer: Answer, now: float) -> None:
        def settle(conn: sqlite3.Connection) -> None:
            conn.execute(rows.COMPLETE_KEY, (
                answer.status, answer.content_type, answer.body, now,
                *rows.scope_params(claim.scope), claim.request_id))
        await self._db.write(settle)

    async def undo_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                           now: float) -> None:
        def undo(conn: sqlite3.Connection) -> None:
            if claim is not None:
                conn.execute(rows.RELEASE_KEY, (*rows.scope_params(claim.scope),
                                                claim.request_id))
            if reservation is not None:
                r = reservation
                usage = release(self._usage_in(conn, r.tenant, r.run_id), r.spend, r.tool)
                conn.execute(rows.UPSERT_USAGE, (r.tenant, r.run_id, _usage_json(usage),
                                                 now))
        await self._db.write(undo)

    async def purge_runs(self, before: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            return int(conn.execute(rows.PURGE_RUNS, (before,)).rowcount)
        return await self._db.in_background(purge)

    async def purge_keys(self, before: float) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            return int(conn.execute(rows.PURGE_KEYS, (before, before)).rowcount)
        return await self._db.in_background(purge)

    @staticmethod
    def _usage_in(conn: sqlite3.Connection, tenant: str, run_id: str) -> Usage:
        row = conn.execute(rows.SELECT_USAGE, (tenant, run_id)).fetchone()
        return _usage(row[0] if row else None)

    async def usage(self, tenant: str, run_id: str) -> Usage:
        return await self._db.read(lambda: self._usage_in(self._connection(), tenant, run_id))

    # -- the approval queue ------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[Approval]:
        conn = self._connection()
        found = [tuple(r) for r in conn.execute(f"{rows.SELECT_APPROVALS}{where}",
                                                params).fetchall()]
        votes = _votes_in(conn, [r[0] for r in found])
        return [rows.approval_from_row(r, votes.get(r[0], ())) for r in found]

    async def get_approval(self, approval_id: str) -> Approval | None:
        found = await self._db.read(self._select, " WHERE id = ?", (approval_id,))
        return found[0] if found else None

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]:
        where, params = rows.list_filter(status, tool, tenant, limit)
        return await self._db.read(self._select, where, params)

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]:
        marks = ", ".join("?" * len(states))
        return await self._db.read(self._select, f" WHERE status IN ({marks}) ORDER BY created_at",
                               tuple(sorted(str(s) for s in states)))

    def _get_in(self, conn: sqlite3.Connection, approval_id: str) -> Approval:
        row = conn.execute(f"{rows.SELECT_APPROVALS} WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise KeyError(approval_id)
        return rows.approval_from_row(tuple(row), _votes_in(conn, [approval_id])[approval_id])

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        def vote(conn: sqlite3.Connection) -> Approval:
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
        return await self._db.write_alone(vote)

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         check: ApprovalHook | None = None,
                         **fields: Any) -> Approval | None:
        sql = rows.transition_sql(from_states, fields, owner_is)
        params = rows.transition_params(approval_id, from_states, to, now, fields, owner_is)

        def move(conn: sqlite3.Connection) -> Approval | None:
            if check is not None:
                check(self._get_in(conn, approval_id))  # raises: rolls back
            if conn.execute(sql, params).rowcount != 1:
                return None
            after = self._get_in(conn, approval_id)
            if record is not None:
                record(after)  # write-ahead: if the audit record fails, nothing commits
            return after
        return await self._db.write_alone(move)

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        def expire(conn: sqlite3.Connection) -> list[Approval]:
            ids = [r[0] for r in conn.execute(rows.EXPIRE_DUE, (now, now)).fetchall()]
            expired = [self._get_in(conn, i) for i in ids]
            for approval in expired:
                record(approval)
            return expired
        return await self._db.in_background(expire)

    async def heartbeat(self, instance: str, now: float) -> None:
        def beat(conn: sqlite3.Connection) -> None:
            conn.execute(rows.HEARTBEAT, (instance, now))
        await self._db.write(beat)

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        return await self._db.read(lambda: [
            rows.approval_from_row(tuple(r)) for r in self._connection().execute(
                rows.ABANDONED, (now - stale_s,)).fetchall()])

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch:
        switch = KillSwitch(scope, reason, dict(actor), now)

        def put(conn: sqlite3.Connection) -> KillSwitch:
            conn.execute(rows.PUT_SWITCH, (scope, reason, rows.actor_json(actor), now))
            record(switch)
            return switch
        return await self._db.write_alone(put)

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None:
        def clear(conn: sqlite3.Connection) -> KillSwitch | None:
            row = conn.execute(rows.CLEAR_SWITCH, (scope,)).fetchone()
            if row is None:
                return None
            switch = rows.switch_from_row(tuple(row))
            record(switch)
            return switch
        return await self._db.write_alone(clear)

    async def kill_list(self) -> list[KillSwitch]:
        return await self._db.read(lambda: [rows.switch_from_row(tuple(r)) for r in
                                        self._connection().execute(rows.LIST_SWITCHES)])

    async def seen(self, kind: Literal["tenant", "agent"], name: str) -> bool:
        def look() -> bool:
            conn = self._connection()
            if kind == "tenant":
                return bool(conn.execute(rows.TENANT_SEEN, (name, name, name)).fetchone()[0])
            return rows.agent_in([r[0] for r in conn.execute(rows.HELD_PRINCIPALS)], name)
        # On the store's thread: it may read every held call's principal.
        return await self._db.on_thread(look)

    async def close(self) -> None:
        await self._db.close()


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
