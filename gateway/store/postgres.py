"""The PostgreSQL state store: one queue, one set of idempotency keys, budgets and kill
switches for every gateway replica (one sidecar per agent pod).

asyncpg with a pool. Atomic changes are one transaction each, serialised where it matters
by row locks (`SELECT … FOR UPDATE`, or the unique key an `INSERT … ON CONFLICT` waits on)
rather than by the isolation level, so replicas wait for each other only on the same
approval, key or run. The statements are those of `gateway.store.rows`, numbered for
PostgreSQL. Schema changes are the migrations of `gateway.store.schema`, applied at start
under an advisory lock, so replicas starting together apply each one once. A lost
connection is `StoreUnavailable` (503) for the calls that needed it; the pool reconnects on
its own when the server is back.

Its size is earned: it is the whole `StateStore` protocol for one dialect, one short
method per operation; the statements and row codecs it shares with SQLite are in
`gateway.store.rows`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Literal

import asyncpg
import orjson

from gateway.approvals.model import Approval, ApprovalStatus, Vote
from gateway.core.errors import GatewayError, StoreUnavailable
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

MIGRATION_LOCK = 0x746F6F6C67617465  # "toolgate"
MIGRATIONS = migrations(Dialect.POSTGRES)
# What a lost or refused connection raises, besides asyncpg's own errors.
log = logging.getLogger("toolgate")
_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_MARK = re.compile(r"\?")
CLAIM_ATTEMPTS = 3


DSN_UNPARSABLE = ("the PostgreSQL DSN cannot be parsed; percent-encode special characters "
                  "in the password")


async def _pool(dsn: str) -> asyncpg.Pool:
    """The connection pool, or `StoreUnavailable(DSN_UNPARSABLE)`.

    SECURITY: asyncpg's parse errors quote the DSN — an unencoded `/`, `?` or `#` in the
    password makes it read a piece of the password as the port or a query parameter
    (`invalid literal for int() with base 10: 'q8Zk'`). Neither the message nor the
    exception (as a cause or context) goes any further."""
    try:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=10, command_timeout=10,
                                         timeout=5)
    except (ValueError, asyncpg.ClientConfigurationError):
        pass
    raise StoreUnavailable(DSN_UNPARSABLE)


class _Vanished(Exception):
    """A key row gone between a conflicting insert and its lock: claim it again."""


@functools.cache
def pg(sql: str) -> str:
    """A shared statement with `?` placeholders, numbered (`$1`, …) for PostgreSQL."""
    sql = sql.replace(" owner IS ?", " owner IS NOT DISTINCT FROM ?")
    count = iter(range(1, sql.count("?") + 1))
    return _MARK.sub(lambda _: f"${next(count)}", sql)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except GatewayError:
        raise
    except _DOWN as exc:
        # SECURITY: the driver's text (server address, database, user) is for the operator's
        # log, not for the agent, the audit log or /readyz, which answer anyone. A server
        # error's text may quote a value (a tool argument): only its SQLSTATE is logged.
        detail = f"SQLSTATE {exc.sqlstate}" if isinstance(exc, asyncpg.PostgresError) \
            else str(exc)
        log.warning("%s: %s: %s", what, type(exc).__name__, detail)
        raise StoreUnavailable(f"{what} ({type(exc).__name__})") from exc


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        """Connect and migrate. Raises `StoreUnavailable`: `DSN_UNPARSABLE` for a DSN the
        driver cannot parse."""
        with _unavailable("cannot open the state store"):
            pool = await _pool(dsn)
            store = cls(pool)
            try:
                await store._migrate()
            except BaseException:
                await pool.close()
                raise
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS toolgate_schema "
                               "(version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM toolgate_schema") or 0
            if version == 1 and await conn.fetchval(
                    "SELECT to_regclass('idempotency') IS NOT NULL"):
                # Version 0.1.0 applied migrations 1 and 2 as one and recorded 1.
                version = 2
                await conn.execute("INSERT INTO toolgate_schema (version) VALUES (2)")
            if version > len(MIGRATIONS):
                raise StoreUnavailable(f"state store schema version {version} is newer "
                                       f"than this gateway ({len(MIGRATIONS)})")
            for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
                for sql in step:
                    await conn.execute(sql)
                await conn.execute("INSERT INTO toolgate_schema (version) VALUES ($1)", number)

    @contextlib.asynccontextmanager
    async def _tx(self, what: str = "state store unavailable") -> AsyncIterator[Any]:
        with _unavailable(what):
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Any]:
        with _unavailable("state store unavailable"):
            async with self._pool.acquire() as conn:
                yield conn

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.fetchval("SELECT 1")

    # -- a call's transactions ---------------------------------------------------------------

    async def _key_in(self, conn: Any, scope: Scope) -> KeyState | None:
        row = await conn.fetchrow(pg(rows.SELECT_KEY), *rows.scope_params(scope))
        if row is None:
            return None
        approval_id = row[len(rows.KEY_COLUMNS) - 1]
        votes = (await self._votes(conn, [approval_id]))[approval_id] if approval_id else []
        return rows.key_from_row(tuple(row), votes)

    async def key_state(self, scope: Scope) -> KeyState | None:
        async with self._read() as conn:
            return await self._key_in(conn, scope)

    async def _claim_in(self, conn: Any, claim: KeyClaim, status: KeyStatus,
                        approval_id: str | None, now: float) -> KeyState | None:
        """Take the key for `claim`; the state that keeps it from us, if any. The insert
        waits on a concurrent claim of the same key, so the winner is decided here."""
        done = await conn.execute(pg(rows.INSERT_KEY), *rows.scope_params(claim.scope),
                                  claim.fingerprint, claim.request_id, str(status),
                                  claim.lease_until, now, approval_id, now)
        if done == "INSERT 0 1":
            return None
        await conn.execute("SELECT 1 FROM idempotency WHERE tenant = $1 AND tool = $2 AND "
                           "key = $3 FOR UPDATE", *rows.scope_params(claim.scope))
        existing = await self._key_in(conn, claim.scope)
        if existing is None:
            # Freed (a claim given back, a purge) between the insert and the lock.
            raise _Vanished
        if not may_take_over(existing, claim, now):
            return existing
        await conn.execute(pg(rows.TAKE_OVER_KEY), claim.request_id, str(status),
                           claim.lease_until, approval_id, now, *rows.scope_params(claim.scope))
        return None

    async def _locked_usage(self, conn: Any, tenant: str, run_id: str, now: float) -> Usage:
        await conn.execute("INSERT INTO runs (tenant, run_id, usage, updated_at) VALUES "
                           "($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                           tenant, run_id, _usage_json(Usage()), now)
        return _usage(await conn.fetchval("SELECT usage FROM runs WHERE tenant = $1 AND "
                                          "run_id = $2 FOR UPDATE", tenant, run_id))

    async def commit_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                             now: float) -> KeyState | None:
        for _ in range(CLAIM_ATTEMPTS):
            try:
                return await self._commit_forward(claim, reservation, now)
            except _Vanished:
                continue
        raise StoreUnavailable("the idempotency key kept changing while it was claimed")

    async def _commit_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                              now: float) -> KeyState | None:
        async with self._tx() as conn:
            if claim is not None:
                taken = await self._claim_in(conn, claim, KeyStatus.IN_FLIGHT, None, now)
                if taken is not None:
                    return taken
            if reservation is not None:
                r = reservation
                usage = check_reservation(
                    await self._locked_usage(conn, r.tenant, r.run_id, now), r.limits, r.tool,
                    r.spend)  # raises BudgetExceeded: the whole transaction rolls back
                await conn.execute(pg(rows.UPSERT_USAGE), r.tenant, r.run_id,
                                   _usage_json(usage), now)
            return None

    async def commit_hold(self, approval: Approval, claim: KeyClaim | None,
                          record: ApprovalHook) -> KeyState | None:
        for _ in range(CLAIM_ATTEMPTS):
            try:
                return await self._commit_hold(approval, claim, record)
            except _Vanished:
                continue
        raise StoreUnavailable("the idempotency key kept changing while it was claimed")

    async def _commit_hold(self, approval: Approval, claim: KeyClaim | None,
                           record: ApprovalHook) -> KeyState | None:
        async with self._tx("cannot queue the call") as conn:
            if claim is not None:
                taken = await self._claim_in(conn, claim, KeyStatus.HELD, approval.id,
                                             approval.created_at)
                if taken is not None:
                    return taken
            await conn.execute(pg(rows.INSERT_APPROVAL), *rows.approval_row(approval))
            record(approval)  # write-ahead: if the audit record fails, nothing commits
            return None

    async def settle(self, claim: KeyClaim, answer: Answer, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(pg(rows.COMPLETE_KEY), answer.status, answer.content_type,
                               answer.body, now, *rows.scope_params(claim.scope),
                               claim.request_id)

    async def undo_forward(self, claim: KeyClaim | None, reservation: Reservation | None,
                           now: float) -> None:
        async with self._tx() as conn:
            if claim is not None:
                await conn.execute(pg(rows.RELEASE_KEY), *rows.scope_params(claim.scope),
                                   claim.request_id)
            if reservation is not None:
                r = reservation
                usage = release(await self._locked_usage(conn, r.tenant, r.run_id, now),
                                r.spend, r.tool)
                await conn.execute(pg(rows.UPSERT_USAGE), r.tenant, r.run_id,
                                   _usage_json(usage), now)

    async def purge_runs(self, before: float) -> int:
        async with self._tx() as conn:
            done = await conn.execute(pg(rows.PURGE_RUNS), before)
        return int(done.split()[-1])

    async def purge_keys(self, before: float) -> int:
        async with self._tx() as conn:
            done = await conn.execute(pg(rows.PURGE_KEYS), before, before)
        return int(done.split()[-1])

    async def usage(self, tenant: str, run_id: str) -> Usage:
        async with self._read() as conn:
            return _usage(await conn.fetchval(pg(rows.SELECT_USAGE), tenant, run_id))

    # -- the approval queue ------------------------------------------------------------------

    @staticmethod
    async def _votes(conn: Any, ids: list[str]) -> dict[str, list[Vote]]:
        votes: dict[str, list[Vote]] = {i: [] for i in ids}
        if ids:
            for v in await conn.fetch(
                    "SELECT approval_id, approver, comment, created_at FROM approval_votes "
                    "WHERE approval_id = ANY($1) ORDER BY created_at", ids):
                votes[v[0]].append(rows.vote_from_row(v[1], v[2], v[3]))
        return votes

    async def _approvals(self, conn: Any, sql: str, *args: Any) -> list[Approval]:
        found = [tuple(r) for r in await conn.fetch(pg(sql), *args)]
        votes = await self._votes(conn, [r[0] for r in found])
        return [rows.approval_from_row(r, votes[r[0]]) for r in found]

    async def _select(self, where: str, *args: Any) -> list[Approval]:
        async with self._read() as conn:
            return await self._approvals(conn, f"{rows.SELECT_APPROVALS}{where}", *args)

    async def get_approval(self, approval_id: str) -> Approval | None:
        found = await self._select(" WHERE id = ?", approval_id)
        return found[0] if found else None

    async def list_approvals(self, *, status: str | None = None, tool: str | None = None,
                             tenant: str | None = None, limit: int = 100) -> list[Approval]:
        where, params = rows.list_filter(status, tool, tenant, limit)
        return await self._select(where, *params)

    async def in_states(self, states: frozenset[ApprovalStatus]) -> list[Approval]:
        marks = ", ".join("?" * len(states))
        return await self._select(f" WHERE status IN ({marks}) ORDER BY created_at",
                                  *sorted(str(s) for s in states))

    async def _locked(self, conn: Any, approval_id: str) -> Approval:
        found = await self._approvals(conn, f"{rows.SELECT_APPROVALS} WHERE id = ? FOR UPDATE",
                                      approval_id)
        if not found:
            raise KeyError(approval_id)
        return found[0]

    async def vote(self, approval_id: str, approver: Mapping[str, Any], comment: str | None,
                   now: float, *, check: ApprovalHook, record: ApprovalHook) -> Approval:
        async with self._tx() as conn:
            current = await self._locked(conn, approval_id)
            check(current)
            await conn.execute(pg(rows.INSERT_VOTE), approval_id, str(approver["sub"]),
                               orjson.dumps(approver), comment, now)
            if await conn.fetchval(pg(rows.COUNT_VOTES), approval_id) >= \
                    current.approvals_required:
                await conn.execute(pg(rows.MARK_APPROVED), now, approval_id)
            after = await self._locked(conn, approval_id)
            record(after)
            return after

    async def transition(self, approval_id: str, from_states: frozenset[ApprovalStatus],
                         to: ApprovalStatus, now: float, record: ApprovalHook | None = None,
                         owner_is: tuple[str | None] | None = None,
                         check: ApprovalHook | None = None,
                         **fields: Any) -> Approval | None:
        sql = rows.transition_sql(from_states, fields, owner_is)
        params = rows.transition_params(approval_id, from_states, to, now, fields, owner_is)
        async with self._tx() as conn:
            if check is not None:
                check(await self._locked(conn, approval_id))  # raises: rolls back
            if await conn.execute(pg(sql), *params) != "UPDATE 1":
                return None
            after = await self._locked(conn, approval_id)
            if record is not None:
                record(after)
            return after

    async def expire_due(self, now: float, record: ApprovalHook) -> list[Approval]:
        async with self._tx() as conn:
            ids = [r[0] for r in await conn.fetch(pg(rows.EXPIRE_DUE), now, now)]
            expired = [await self._locked(conn, i) for i in ids]
            for approval in expired:
                record(approval)
            return expired

    async def heartbeat(self, instance: str, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(pg(rows.HEARTBEAT), instance, now)

    async def abandoned(self, now: float, stale_s: float) -> list[Approval]:
        async with self._read() as conn:
            return [rows.approval_from_row(tuple(r)) for r in
                    await conn.fetch(pg(rows.ABANDONED), now - stale_s)]

    # -- kill switches -----------------------------------------------------------------------

    async def kill_set(self, scope: str, reason: str, actor: Mapping[str, Any], now: float,
                       record: Callable[[KillSwitch], None]) -> KillSwitch:
        switch = KillSwitch(scope, reason, dict(actor), now)
        async with self._tx() as conn:
            await conn.execute(pg(rows.PUT_SWITCH), scope, reason, rows.actor_json(actor), now)
            record(switch)
        return switch

    async def kill_clear(self, scope: str, now: float,
                         record: Callable[[KillSwitch], None]) -> KillSwitch | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(pg(rows.CLEAR_SWITCH), scope)
            if row is None:
                return None
            switch = rows.switch_from_row(tuple(row))
            record(switch)
            return switch

    async def kill_list(self) -> list[KillSwitch]:
        async with self._read() as conn:
            return [rows.switch_from_row(tuple(r)) for r in
                    await conn.fetch(rows.LIST_SWITCHES)]

    async def seen(self, kind: Literal["tenant", "agent"], name: str) -> bool:
        async with self._read() as conn:
            if kind == "tenant":
                return bool(await conn.fetchval(pg(rows.TENANT_SEEN), name, name, name))
            return rows.agent_in([r[0] for r in await conn.fetch(rows.HELD_PRINCIPALS)],
                                 name)

    async def close(self) -> None:
        await self._pool.close()
