"""The SQLite state store: the embedded default, for one gateway process.

One aiosqlite connection (its own thread, so the event loop never blocks on disk), WAL
journal so readers never wait for the writer, and `synchronous=FULL` because a queued call
that vanishes on power loss is a lost action. Schema changes are numbered migrations
recorded in `PRAGMA user_version` and applied at start.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from gateway.errors import StoreUnavailable
from gateway.store.base import Approval, ApprovalStatus, StoredCall

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
        call BLOB NOT NULL,
        body BLOB NOT NULL,
        idempotency_key TEXT,
        result_status INTEGER,
        result_body BLOB
    );
    CREATE INDEX approvals_status ON approvals (status, expires_at);
    """,
)


class SqliteStore:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: queued calls hold their exact arguments; owner-only. SQLite gives its
        # -wal and -shm files the database file's permissions.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA busy_timeout=5000")
            store = cls(conn, path)
            await store._migrate()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the state store {path}: {exc}") from exc
        return store

    async def _migrate(self) -> None:
        async with self._conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreUnavailable(f"state store schema version {version} is newer than this "
                                   f"gateway ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self._conn.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def ping(self) -> None:
        try:
            await self._conn.execute("SELECT 1")
        except (sqlite3.Error, ValueError) as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from exc

    async def create_approval(self, approval: Approval) -> None:
        call = approval.call
        try:
            await self._conn.execute(
                "INSERT INTO approvals (id, status, decision_id, tool, args, call_hash, "
                "principal, sub, tenant, reasons, approvals_required, approver_roles, "
                "created_at, expires_at, call, body, idempotency_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (approval.id, str(approval.status), approval.decision_id, approval.tool,
                 orjson.dumps(approval.args), approval.call_hash,
                 orjson.dumps(approval.principal), approval.sub, approval.tenant,
                 orjson.dumps(approval.reasons), approval.approvals_required,
                 orjson.dumps(approval.approver_roles), approval.created_at,
                 approval.expires_at,
                 orjson.dumps({"upstream": call.upstream, "method": call.method,
                               "path": call.path, "query": call.query,
                               "headers": call.headers}),
                 call.body, approval.idempotency_key))
        except (sqlite3.Error, ValueError) as exc:
            raise StoreUnavailable(f"cannot queue the call: {exc}") from exc

    async def get_approval(self, approval_id: str) -> Approval | None:
        try:
            async with self._conn.execute(
                    "SELECT id, status, decision_id, tool, args, call_hash, principal, reasons, "
                    "approvals_required, approver_roles, created_at, expires_at, call, body, "
                    "idempotency_key, result_status, result_body FROM approvals WHERE id = ?",
                    (approval_id,)) as cur:
                row = await cur.fetchone()
        except (sqlite3.Error, ValueError) as exc:
            raise StoreUnavailable(f"state store unavailable: {exc}") from exc
        return None if row is None else _approval(tuple(row))

    async def close(self) -> None:
        await self._conn.close()


def _approval(row: tuple[Any, ...]) -> Approval:
    (id_, status, decision_id, tool, args, chash, principal, reasons, required, roles,
     created, expires, call, body, key, rstatus, rbody) = row
    c = orjson.loads(call)
    return Approval(
        id=id_, status=ApprovalStatus(status), decision_id=decision_id, tool=tool,
        args=orjson.loads(args), call_hash=chash, principal=orjson.loads(principal),
        reasons=tuple(orjson.loads(reasons)), approvals_required=required,
        approver_roles=tuple(orjson.loads(roles)), created_at=created, expires_at=expires,
        call=StoredCall(upstream=c["upstream"], method=c["method"], path=c["path"],
                        query=c["query"], headers=c["headers"], body=bytes(body)),
        idempotency_key=key, result_status=rstatus,
        result_body=None if rbody is None else bytes(rbody))
