"""The SQLite state store: the embedded default, for one gateway process.

One connection, owned by one worker thread: every operation is one plain function that
runs there whole (one thread hop per operation, not per statement), so the event loop
never blocks on disk and operations never interleave; each change is one
`BEGIN IMMEDIATE` transaction. The WAL journal runs with `synchronous=NORMAL`: a commit
survives the gateway being killed (the SIGKILL tests), though the last commits may be lost
if the machine loses power. In the sidecar deployment the state lives on the pod's
emptyDir, which does not outlive the node anyway; where it must, use PostgreSQL. Schema
changes are numbered migrations recorded in `PRAGMA user_version` and applied at start.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.core.errors import StoreUnavailable
from gateway.state.budgets import Limits, Usage, check_reservation, release
from gateway.state.idempotency import Claim, ClaimState, IdempotencyRecord, Scope
from gateway.store.base import (
    Approval,
    ApprovalHook,
    ApprovalKeyTaken,
    ApprovalStatus,
    KillSwitch,
    StoredCall,
    Vote,
    takeover,
    usage_from_json,
    usage_to_json,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        decision_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        args BLOB NOT NULL,
        call_hash TEXT NOT NULL,
        principal BLOB NOT NULL,
        sub TEXT NOT NULL,
        tenant TEXT,
        reasons BLOB NOT NULL,
        approvals_required INTEGER NOT NULL,
        approver_roles BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        call BLOB NOT NULL,
        body BLOB NOT NULL,
        call_digest TEXT NOT NULL,
        idempotency_key TEXT,
        resend_safe INTEGER NOT NULL,
        reason TEXT,
        result_status INTEGER,
        result_content_type TEXT,
        result_body BLOB,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        error TEXT
    );
    CREATE INDEX approvals_status ON approvals (status, expires_at);
    CREATE UNIQUE INDEX approvals_key ON approvals (COALESCE(tenant, ''), tool, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals (id),
        approver_sub TEXT NOT NULL,
        approver BLOB NOT NULL,
        comment TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (approval_id, approver_sub)
    );
    """,
    """
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        tool TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        request_id TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_until REAL NOT NULL,
        status INTEGER,
        content_type TEXT,
        body BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant, tool, key)
    );
    CREATE INDEX idempotency_age ON idempotency (updated_at);
    CREATE TABLE runs (
        tenant TEXT NOT NULL,
        run_id TEXT NOT NULL,
        usage TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant, run_id)
    );
    CREATE TABLE kill_switches (
        scope TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        seen_at REAL NOT NULL
    );
    """,
)
_IDEM = ("tenant, tool, key, fingerprint, request_id, state, lease_until, status, "
         "content_type, body, created_at")
_COLUMNS = ("id, status, decision_id, tool, args, call_hash, principal, reasons, "
            "approvals_required, approver_roles, created_at, expires_at, updated_at, call, "
            "body, call_digest, idempotency_key, resend_safe, reason, result_status, "
            "result_content_type, result_body, attempts, owner, error")
_UPDATABLE = frozenset({"reason", "result_status", "result_content_type", "result_body",
                        "attempts", "owner", "error"})


T = TypeVar("T")


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: queued calls hold their exact arguments; owner-only. SQLite gives its
        # -wal and -shm files the database file's permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        store = cls(path)
        try:
            await store._run(store._open)
        except StoreUnavailable:
            await store.close()
            raise
        return store

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._conn = conn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"state store schema version {version} is newer than this "
                                   f"gateway ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the store's thread; database errors become `StoreUnavailable`."""
        if self._closed:
            raise StoreUnavailable("the state store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the state store is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the state store is not open")
        return self._conn

    async def ping(self) -> None:
        await self._run(lambda: self._connection().execute("SELECT 1"))

    # -- approvals ---------------------------------------------------------------------------

    async def create_approval(self, approval: Approval) -> None:
        def insert() -> None:
            with self._tx() as conn:
                conn.execute(f"INSERT INTO approvals ({_COLUMNS}, sub, tenant) VALUES "
                             f"({', '.join('?' * 27)})",
                             (*_row(approval), approval.sub, approval.tenant))
        try:
            await self._run(insert)
        except sqlite3.IntegrityError as exc:
            raise ApprovalKeyTaken(approval.idempotency_key) from exc

    def _select(self, sql: str, params: tuple[Any, ...] = ()) -> list[Approval]:
        conn = self._connection()
        rows = [tuple(r) for r in conn.execute(sql, params).fetchall()]
        votes = _votes_in(conn, [r[0] for r in rows])
        return [_approval(r, votes) for r in rows]

    async def get_approval(self, approval_id: str) -> Approval | None:
        found = await self._run(self._select,
                                f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,))
        return found[0] if found else None

    async def find_approval(self, tenant: str | None, tool: str,
                            idempotency_key: str) -> Approval | None:
        found = await self._run(
            self._select, f"SELECT {_COLUMNS} FROM approvals WHERE COALESCE(tenant, '') = ? "
            "AND tool = ? AND idempotency_key = ?", (tenant or "", tool, idempotency_key))
        return found[0] if found else None

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]:
        where, params = [], []
        for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_COLUMNS} FROM approvals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        return await self._run(self._select, sql, (*params, limit))

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]:
        marks = ", ".join("?" * len(states))
        return await self._run(
            self._select,
            f"SELECT {_COLUMNS} FROM approvals WHERE status IN ({marks}) ORDER BY created_at",
            tuple(str(s) for s in states))

    def _get_in(self, conn: sqlite3.Connection, approval_id: str) -> Approval:
        row = conn.execute(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?",
                           (approval_id,)).fetchone()
        if row is None:
            raise KeyError(approval_id)
        return _approval(tuple(row), _votes_in(conn, [approval_id]))

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        def vote() -> Approval:
            with self._tx() as conn:
                current = self._get_in(conn, approval_id)
                check(current)  # raises a GatewayError to refuse: the transaction rolls back
                conn.execute(
                    "INSERT INTO approval_votes (approval_id, approver_sub, approver, comment, "
                    "created_at) VALUES (?, ?, ?, ?, ?)",
                    (approval_id, str(approver["sub"]), orjson.dumps(approver), comment, now))
                votes = conn.execute("SELECT COUNT(*) FROM approval_votes WHERE "
                                     "approval_id = ?", (approval_id,)).fetchone()[0]
                if votes >= current.approvals_required:
                    conn.execute("UPDATE approvals SET status = 'approved', updated_at = ? "
                                 "WHERE id = ? AND status = 'pending'", (now, approval_id))
                after = self._get_in(conn, approval_id)
                record(after)  # write-ahead: if the audit record fails, nothing commits
                return after
        return await self._run(vote)

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         **fields: Any) -> Approval | None:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)}")
        sets = ", ".join(["status = ?", "updated_at = ?", *(f"{k} = ?" for k in fields)])
        marks = ", ".join("?" * len(from_states))
        owner_sql = " AND owner IS ?" if owner_is is not None else ""

        def move() -> Approval | None:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE approvals SET {sets} WHERE id = ? AND status IN ({marks})"
                    f"{owner_sql}",
                    (str(to), now, *fields.values(), approval_id,
                     *(str(s) for s in from_states), *(owner_is or ())))
                if cur.rowcount != 1:
                    return None
                after = self._get_in(conn, approval_id)
                if record is not None:
                    record(after)  # write-ahead: if the audit record fails, nothing commits
                return after
        return await self._run(move)

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        def expire() -> list[Approval]:
            with self._tx() as conn:
                ids = [r[0] for r in conn.execute(
                    "UPDATE approvals SET status = 'expired', updated_at = ?, "
                    "reason = 'not approved before it expired' "
                    "WHERE status = 'pending' AND expires_at <= ? RETURNING id",
                    (now, now)).fetchall()]
                expired = [self._get_in(conn, i) for i in ids]
                for approval in expired:
                    record(approval)
                return expired
        return await self._run(expire)

    async def heartbeat(self, instance: str, now: float) -> None:
        await self._run(self._write, "INSERT INTO replicas (id, seen_at) VALUES (?, ?) ON "
                        "CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                        (instance, now))

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        return await self._run(
            self._select, f"SELECT {_COLUMNS} FROM approvals WHERE status = 'executing' AND "
            "NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = approvals.owner AND "
            "r.seen_at >= ?) ORDER BY created_at", (now - stale_s,))

    # -- idempotency -------------------------------------------------------------------------

    def _idem_in(self, conn: sqlite3.Connection, scope: Scope) -> IdempotencyRecord | None:
        row = conn.execute(f"SELECT {_IDEM} FROM idempotency WHERE tenant = ? AND tool = ? "
                           "AND key = ?", (scope.tenant, scope.tool, scope.key)).fetchone()
        return None if row is None else _idem(tuple(row))

    async def idem_get(self, scope: Scope) -> IdempotencyRecord | None:
        return await self._run(lambda: self._idem_in(self._connection(), scope))

    async def idem_claim(self, scope: Scope, fingerprint: str, request_id: str, now: float,
                         lease_s: float) -> Claim:
        def claim() -> Claim:
            with self._tx() as conn:
                existing = self._idem_in(conn, scope)
                if existing is None:
                    conn.execute(
                        f"INSERT INTO idempotency ({_IDEM}, updated_at) VALUES "
                        "(?, ?, ?, ?, ?, 'in_flight', ?, NULL, NULL, NULL, ?, ?)",
                        (scope.tenant, scope.tool, scope.key, fingerprint, request_id,
                         now + lease_s, now, now))
                elif takeover(existing, fingerprint, now):
                    conn.execute(
                        "UPDATE idempotency SET request_id = ?, lease_until = ?, "
                        "updated_at = ? WHERE tenant = ? AND tool = ? AND key = ?",
                        (request_id, now + lease_s, now, scope.tenant, scope.tool, scope.key))
                else:
                    return Claim(False, existing)
                mine = self._idem_in(conn, scope)
                assert mine is not None
                return Claim(True, mine)
        return await self._run(claim)

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._tx() as conn:
            return int(conn.execute(sql, params).rowcount)

    async def idem_complete(self, scope: Scope, request_id: str, status: int,
                            content_type: str | None, body: bytes, now: float) -> None:
        await self._run(
            self._write,
            "UPDATE idempotency SET state = 'done', status = ?, content_type = ?, body = ?, "
            "updated_at = ? WHERE tenant = ? AND tool = ? AND key = ? AND request_id = ?",
            (status, content_type, body, now, scope.tenant, scope.tool, scope.key, request_id))

    async def idem_release(self, scope: Scope, request_id: str) -> None:
        await self._run(
            self._write,
            "DELETE FROM idempotency WHERE tenant = ? AND tool = ? AND key = ? AND "
            "request_id = ? AND state = 'in_flight'",
            (scope.tenant, scope.tool, scope.key, request_id))

    async def idem_purge(self, before: float) -> int:
        return await self._run(
            self._write, "DELETE FROM idempotency WHERE state = 'done' AND updated_at < ?",
            (before,))

    # -- run budgets -------------------------------------------------------------------------

    @staticmethod
    def _usage_in(conn: sqlite3.Connection, tenant: str, run_id: str) -> Usage:
        row = conn.execute("SELECT usage FROM runs WHERE tenant = ? AND run_id = ?",
                           (tenant, run_id)).fetchone()
        return usage_from_json(row[0] if row else None)

    @staticmethod
    def _set_usage(conn: sqlite3.Connection, tenant: str, run_id: str, usage: Usage,
                   now: float) -> None:
        conn.execute(
            "INSERT INTO runs (tenant, run_id, usage, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant, run_id) DO UPDATE SET usage = excluded.usage, "
            "updated_at = excluded.updated_at", (tenant, run_id, usage_to_json(usage), now))

    async def usage(self, tenant: str, run_id: str) -> Usage:
        return await self._run(lambda: self._usage_in(self._connection(), tenant, run_id))

    async def reserve(self, tenant: str, run_id: str, tool: str, spend: Mapping[str, float],
                      limits: Limits, now: float) -> Usage:
        def reserve() -> Usage:
            with self._tx() as conn:
                usage = check_reservation(self._usage_in(conn, tenant, run_id), limits, tool,
                                          spend)
                self._set_usage(conn, tenant, run_id, usage, now)
                return usage
        return await self._run(reserve)

    async def release_spend(self, tenant: str, run_id: str, spend: Mapping[str, float],
                            now: float, uncount: str | None = None) -> None:
        def give_back() -> None:
            with self._tx() as conn:
                usage = release(self._usage_in(conn, tenant, run_id), spend, uncount)
                self._set_usage(conn, tenant, run_id, usage, now)
        await self._run(give_back)

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch:
        switch = KillSwitch(scope, reason, dict(actor), now)

        def put() -> KillSwitch:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO kill_switches (scope, reason, actor, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                    "reason = excluded.reason, actor = excluded.actor, "
                    "created_at = excluded.created_at",
                    (scope, reason, orjson.dumps(dict(actor)).decode(), now))
                record(switch)
                return switch
        return await self._run(put)

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None:
        def clear() -> KillSwitch | None:
            with self._tx() as conn:
                row = conn.execute("DELETE FROM kill_switches WHERE scope = ? "
                                   "RETURNING scope, reason, actor, created_at",
                                   (scope,)).fetchone()
                if row is None:
                    return None
                switch = KillSwitch(row[0], row[1], orjson.loads(row[2]), row[3])
                record(switch)
                return switch
        return await self._run(clear)

    async def kill_list(self) -> list[KillSwitch]:
        def read() -> list[KillSwitch]:
            rows = self._connection().execute(
                "SELECT scope, reason, actor, created_at FROM kill_switches "
                "ORDER BY scope").fetchall()
            return [KillSwitch(r[0], r[1], orjson.loads(r[2]), r[3]) for r in rows]
        return await self._run(read)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)


def _votes_in(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[Vote]]:
    out: dict[str, list[Vote]] = {i: [] for i in ids}
    if not ids:
        return out
    for approval_id, approver, comment, created in conn.execute(
            f"SELECT approval_id, approver, comment, created_at FROM approval_votes "
            f"WHERE approval_id IN ({', '.join('?' * len(ids))}) ORDER BY created_at",
            tuple(ids)).fetchall():
        out[approval_id].append(Vote(orjson.loads(approver), comment, created))
    return out


def _idem(row: tuple[Any, ...]) -> IdempotencyRecord:
    (tenant, tool, key, fp, request_id, state, lease, status, ctype, body, created) = row
    return IdempotencyRecord(Scope(tenant, tool, key), fp, request_id, ClaimState(state),
                             lease, status, ctype, None if body is None else bytes(body),
                             created)


def _row(a: Approval) -> tuple[Any, ...]:
    return (a.id, str(a.status), a.decision_id, a.tool, orjson.dumps(a.args), a.call_hash,
            orjson.dumps(a.principal), orjson.dumps(a.reasons), a.approvals_required,
            orjson.dumps(a.approver_roles), a.created_at, a.expires_at,
            a.updated_at or a.created_at, orjson.dumps(a.call.to_json()), a.call.body,
            a.call_digest, a.idempotency_key, int(a.resend_safe), a.reason, a.result_status,
            a.result_content_type, a.result_body, a.attempts, a.owner, a.error)


def _approval(row: tuple[Any, ...], votes: Mapping[str, list[Vote]]) -> Approval:
    (id_, status, decision_id, tool, args, chash, principal, reasons, required, roles,
     created, expires, updated, call, body, digest, key, resend_safe, reason, rstatus,
     rtype, rbody, attempts, owner, error) = row
    c = orjson.loads(call)
    return Approval(
        id=id_, status=ApprovalStatus(status), decision_id=decision_id, tool=tool,
        args=orjson.loads(args), call_hash=chash, principal=orjson.loads(principal),
        reasons=tuple(orjson.loads(reasons)), approvals_required=required,
        approver_roles=tuple(orjson.loads(roles)), created_at=created, expires_at=expires,
        updated_at=updated,
        call=StoredCall(upstream=c["upstream"], method=c["method"], path=c["path"],
                        query=c["query"], headers=c["headers"], body=bytes(body),
                        client_ip=c.get("client_ip", ""), host=c.get("host", ""),
                        scheme=c.get("scheme", "http"), run_id=c.get("run_id"),
                        spend=c.get("spend", {})),
        call_digest=digest, idempotency_key=key, resend_safe=bool(resend_safe), reason=reason,
        result_status=rstatus, result_content_type=rtype,
        result_body=None if rbody is None else bytes(rbody), attempts=attempts,
        owner=owner, error=error,
        votes=tuple(votes.get(id_, ())))
