"""The PostgreSQL state store: one queue, one set of idempotency records, budgets and kill
switches for every gateway replica (one sidecar per agent pod).

asyncpg with a pool. Atomic changes are one transaction each, serialised where it matters
by row locks (`SELECT … FOR UPDATE`) rather than by the isolation level, so replicas wait
for each other only on the same approval, key or run. Schema changes are numbered
migrations applied at start under an advisory lock, so replicas starting together apply
each one once. A lost connection is `StoreUnavailable` (503) for the calls that needed it;
the pool reconnects on its own when the server is back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import asyncpg
import orjson

from gateway.core.errors import GatewayError, StoreUnavailable
from gateway.state.budgets import Limits, Usage, check_reservation, release
from gateway.state.idempotency import Claim, ClaimState, IdempotencyRecord, Scope
from gateway.store.base import (
    Approval,
    ApprovalHook,
    ApprovalKeyTaken,
    ApprovalStatus,
    KillSwitch,
    Vote,
    takeover,
    usage_from_json,
    usage_to_json,
)
from gateway.store.sqlite import _COLUMNS, _approval, _row

MIGRATION_LOCK = 0x746F6F6C67617465  # "toolgate"
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY, status TEXT NOT NULL, decision_id TEXT NOT NULL,
        tool TEXT NOT NULL, args BYTEA NOT NULL, call_hash TEXT NOT NULL,
        principal BYTEA NOT NULL, sub TEXT NOT NULL, tenant TEXT, reasons BYTEA NOT NULL,
        approvals_required INTEGER NOT NULL, approver_roles BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, call BYTEA NOT NULL, body BYTEA NOT NULL,
        call_digest TEXT NOT NULL, idempotency_key TEXT, resend_safe INTEGER NOT NULL,
        reason TEXT, result_status INTEGER, result_content_type TEXT, result_body BYTEA,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        error TEXT
    );
    CREATE INDEX approvals_status ON approvals (status, expires_at);
    CREATE UNIQUE INDEX approvals_key ON approvals (COALESCE(tenant, ''), tool, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals (id), approver_sub TEXT NOT NULL,
        approver BYTEA NOT NULL, comment TEXT, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (approval_id, approver_sub)
    );
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL, tool TEXT NOT NULL, key TEXT NOT NULL,
        fingerprint TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL, status INTEGER, content_type TEXT,
        body BYTEA, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, tool, key)
    );
    CREATE INDEX idempotency_age ON idempotency (updated_at);
    CREATE TABLE runs (
        tenant TEXT NOT NULL, run_id TEXT NOT NULL, usage TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, run_id)
    );
    CREATE TABLE kill_switches (
        scope TEXT PRIMARY KEY, reason TEXT NOT NULL, actor TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE replicas (id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
    """,
)
_IDEM = ("tenant, tool, key, fingerprint, request_id, state, lease_until, status, "
         "content_type, body, created_at")
_UPDATABLE = frozenset({"reason", "result_status", "result_content_type", "result_body",
                        "attempts", "owner", "error"})
# What a lost or refused connection raises, besides asyncpg's own errors.
_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except (GatewayError, asyncpg.UniqueViolationError):
        raise
    except _DOWN as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        with _unavailable("cannot open the state store"):
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10,
                                             command_timeout=10, timeout=5)
            store = cls(pool)
            await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS toolgate_schema "
                               "(version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM toolgate_schema") or 0
            if version > len(MIGRATIONS):
                raise StoreUnavailable(f"state store schema version {version} is newer "
                                       f"than this gateway ({len(MIGRATIONS)})")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("INSERT INTO toolgate_schema (version) VALUES ($1)", number)

    @contextlib.asynccontextmanager
    async def _tx(self, what: str = "state store unavailable") -> AsyncIterator[Any]:
        with _unavailable(what):
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        with _unavailable("state store unavailable"):
            return list(await self._pool.fetch(sql, *args))

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    # -- approvals ---------------------------------------------------------------------------

    async def create_approval(self, approval: Approval) -> None:
        marks = ", ".join(f"${i}" for i in range(1, 28))
        try:
            async with self._tx("cannot queue the call") as conn:
                await conn.execute(f"INSERT INTO approvals ({_COLUMNS}, sub, tenant) "
                                   f"VALUES ({marks})",
                                   *_row(approval), approval.sub, approval.tenant)
        except asyncpg.UniqueViolationError as exc:
            raise ApprovalKeyTaken(approval.idempotency_key) from exc

    async def _approvals(self, conn: Any, rows: list[Any]) -> list[Approval]:
        ids = [r[0] for r in rows]
        votes: dict[str, list[Vote]] = {i: [] for i in ids}
        if ids:
            for v in await conn.fetch(
                    "SELECT approval_id, approver, comment, created_at FROM approval_votes "
                    "WHERE approval_id = ANY($1) ORDER BY created_at", ids):
                votes[v[0]].append(Vote(orjson.loads(v[1]), v[2], v[3]))
        return [_approval(tuple(r), votes) for r in rows]

    async def _select(self, where: str, *args: Any, suffix: str = "") -> list[Approval]:
        with _unavailable("state store unavailable"):
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(f"SELECT {_COLUMNS} FROM approvals {where} {suffix}",
                                        *args)
                return await self._approvals(conn, list(rows))

    async def get_approval(self, approval_id: str) -> Approval | None:
        found = await self._select("WHERE id = $1", approval_id)
        return found[0] if found else None

    async def find_approval(self, tenant: str | None, tool: str,
                            idempotency_key: str) -> Approval | None:
        found = await self._select("WHERE COALESCE(tenant, '') = $1 AND tool = $2 AND "
                                   "idempotency_key = $3", tenant or "", tool, idempotency_key)
        return found[0] if found else None

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        args.append(limit)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return await self._select(clause, *args,
                                  suffix=f"ORDER BY created_at DESC LIMIT ${len(args)}")

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]:
        return await self._select("WHERE status = ANY($1)", [str(s) for s in states],
                                  suffix="ORDER BY created_at")

    async def _locked(self, conn: Any, approval_id: str) -> Approval:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE",
                                approval_id)
        if not rows:
            raise KeyError(approval_id)
        return (await self._approvals(conn, list(rows)))[0]

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        async with self._tx() as conn:
            current = await self._locked(conn, approval_id)
            check(current)
            await conn.execute(
                "INSERT INTO approval_votes (approval_id, approver_sub, approver, comment, "
                "created_at) VALUES ($1, $2, $3, $4, $5)",
                approval_id, str(approver["sub"]), orjson.dumps(approver), comment, now)
            votes = await conn.fetchval("SELECT count(*) FROM approval_votes WHERE "
                                        "approval_id = $1", approval_id)
            if votes >= current.approvals_required:
                await conn.execute("UPDATE approvals SET status = 'approved', updated_at = $1 "
                                   "WHERE id = $2 AND status = 'pending'", now, approval_id)
            after = await self._locked(conn, approval_id)
            record(after)
            return after

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         **fields: Any) -> Approval | None:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)}")
        sets = ["status = $1", "updated_at = $2",
                *(f"{k} = ${i}" for i, k in enumerate(fields, start=5))]
        args: list[Any] = [str(to), now, approval_id, [str(s) for s in from_states],
                           *fields.values()]
        owner_sql = ""
        if owner_is is not None:
            args.append(owner_is[0])
            owner_sql = f" AND owner IS NOT DISTINCT FROM ${len(args)}"
        async with self._tx() as conn:
            done = await conn.execute(
                f"UPDATE approvals SET {', '.join(sets)} WHERE id = $3 AND status = ANY($4)"
                f"{owner_sql}", *args)
            if done != "UPDATE 1":
                return None
            after = await self._locked(conn, approval_id)
            if record is not None:
                record(after)
            return after

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "UPDATE approvals SET status = 'expired', updated_at = $1, "
                "reason = 'not approved before it expired' WHERE status = 'pending' AND "
                "expires_at <= $1 RETURNING id", now)
            expired = [await self._locked(conn, r[0]) for r in rows]
            for approval in expired:
                record(approval)
            return expired

    async def heartbeat(self, instance: str, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute("INSERT INTO replicas (id, seen_at) VALUES ($1, $2) ON CONFLICT "
                               "(id) DO UPDATE SET seen_at = excluded.seen_at", instance, now)

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        return await self._select(
            "WHERE status = 'executing' AND NOT EXISTS (SELECT 1 FROM replicas r WHERE "
            "r.id = approvals.owner AND r.seen_at >= $1)", now - stale_s,
            suffix="ORDER BY created_at")

    # -- idempotency -------------------------------------------------------------------------

    async def idem_get(self, scope: Scope) -> IdempotencyRecord | None:
        rows = await self._fetch(f"SELECT {_IDEM} FROM idempotency WHERE tenant = $1 AND "
                                 "tool = $2 AND key = $3", scope.tenant, scope.tool, scope.key)
        return _idem(tuple(rows[0])) if rows else None

    async def idem_claim(self, scope: Scope, fingerprint: str, request_id: str, now: float,
                         lease_s: float) -> Claim:
        for _ in range(3):  # the row can vanish between the insert and the select (purge)
            claim = await self._claim_once(scope, fingerprint, request_id, now, lease_s)
            if claim is not None:
                return claim
        raise StoreUnavailable("the idempotency key could not be claimed; retry")

    async def _claim_once(self, scope: Scope, fingerprint: str, request_id: str, now: float,
                          lease_s: float) -> Claim | None:
        async with self._tx() as conn:
            key = (scope.tenant, scope.tool, scope.key)
            inserted = await conn.fetch(
                f"INSERT INTO idempotency ({_IDEM}, updated_at) VALUES ($1, $2, $3, $4, $5, "
                "'in_flight', $6, NULL, NULL, NULL, $7, $7) ON CONFLICT DO NOTHING "
                f"RETURNING {_IDEM}", *key, fingerprint, request_id, now + lease_s, now)
            if inserted:
                return Claim(True, _idem(tuple(inserted[0])))
            rows = await conn.fetch(f"SELECT {_IDEM} FROM idempotency WHERE tenant = $1 AND "
                                    "tool = $2 AND key = $3 FOR UPDATE", *key)
            if not rows:
                return None
            existing = _idem(tuple(rows[0]))
            if not takeover(existing, fingerprint, now):
                return Claim(False, existing)
            rows = await conn.fetch(
                "UPDATE idempotency SET request_id = $4, lease_until = $5, updated_at = $6 "
                f"WHERE tenant = $1 AND tool = $2 AND key = $3 RETURNING {_IDEM}",
                *key, request_id, now + lease_s, now)
            return Claim(True, _idem(tuple(rows[0])))

    async def idem_complete(self, scope: Scope, request_id: str, status: int,
                            content_type: str | None, body: bytes, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE idempotency SET state = 'done', status = $5, content_type = $6, "
                "body = $7, updated_at = $8 WHERE tenant = $1 AND tool = $2 AND key = $3 "
                "AND request_id = $4", scope.tenant, scope.tool, scope.key, request_id,
                status, content_type, body, now)

    async def idem_release(self, scope: Scope, request_id: str) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "DELETE FROM idempotency WHERE tenant = $1 AND tool = $2 AND key = $3 AND "
                "request_id = $4 AND state = 'in_flight'",
                scope.tenant, scope.tool, scope.key, request_id)

    async def idem_purge(self, before: float) -> int:
        async with self._tx() as conn:
            done = await conn.execute("DELETE FROM idempotency WHERE state = 'done' AND "
                                      "updated_at < $1", before)
        return int(done.split()[-1])

    # -- run budgets -------------------------------------------------------------------------

    async def usage(self, tenant: str, run_id: str) -> Usage:
        rows = await self._fetch("SELECT usage FROM runs WHERE tenant = $1 AND run_id = $2",
                                 tenant, run_id)
        return usage_from_json(rows[0][0] if rows else None)

    async def _locked_usage(self, conn: Any, tenant: str, run_id: str, now: float) -> Usage:
        await conn.execute("INSERT INTO runs (tenant, run_id, usage, updated_at) VALUES "
                           "($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                           tenant, run_id, usage_to_json(Usage()), now)
        text = await conn.fetchval("SELECT usage FROM runs WHERE tenant = $1 AND run_id = $2 "
                                   "FOR UPDATE", tenant, run_id)
        return usage_from_json(text)

    async def reserve(self, tenant: str, run_id: str, tool: str, spend: Mapping[str, float],
                      limits: Limits, now: float) -> Usage:
        async with self._tx() as conn:
            usage = check_reservation(await self._locked_usage(conn, tenant, run_id, now),
                                      limits, tool, spend)
            await conn.execute("UPDATE runs SET usage = $3, updated_at = $4 WHERE tenant = $1 "
                               "AND run_id = $2", tenant, run_id, usage_to_json(usage), now)
            return usage

    async def release_spend(self, tenant: str, run_id: str, spend: Mapping[str, float],
                            now: float, uncount: str | None = None) -> None:
        async with self._tx() as conn:
            usage = release(await self._locked_usage(conn, tenant, run_id, now), spend,
                            uncount)
            await conn.execute("UPDATE runs SET usage = $3, updated_at = $4 WHERE tenant = $1 "
                               "AND run_id = $2", tenant, run_id, usage_to_json(usage), now)

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch:
        switch = KillSwitch(scope, reason, dict(actor), now)
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO kill_switches (scope, reason, actor, created_at) VALUES "
                "($1, $2, $3, $4) ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, "
                "actor = excluded.actor, created_at = excluded.created_at",
                scope, reason, orjson.dumps(dict(actor)).decode(), now)
            record(switch)
        return switch

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None:
        async with self._tx() as conn:
            row = await conn.fetchrow("DELETE FROM kill_switches WHERE scope = $1 "
                                      "RETURNING scope, reason, actor, created_at", scope)
            if row is None:
                return None
            switch = KillSwitch(row[0], row[1], orjson.loads(row[2]), row[3])
            record(switch)
            return switch

    async def kill_list(self) -> list[KillSwitch]:
        rows = await self._fetch("SELECT scope, reason, actor, created_at FROM kill_switches "
                                 "ORDER BY scope")
        return [KillSwitch(r[0], r[1], orjson.loads(r[2]), r[3]) for r in rows]

    async def close(self) -> None:
        await self._pool.close()


def _idem(row: tuple[Any, ...]) -> IdempotencyRecord:
    (tenant, tool, key, fp, request_id, state, lease, status, ctype, body, created) = row
    return IdempotencyRecord(Scope(tenant, tool, key), fp, request_id, ClaimState(state),
                             lease, status, ctype, None if body is None else bytes(body),
                             created)
