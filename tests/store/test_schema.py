"""The schema, written once, migrates a database made by Toolgate 0.1 on both stores; and
one made before `not_sent` was a state of its own."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import asyncpg
import orjson

from gateway.approvals.model import ApprovalStatus
from gateway.state.idempotency import KeyClaim, KeyStatus, Scope, judge
from gateway.store.postgres import PostgresStore
from gateway.store.schema import Dialect, migrations
from gateway.store.sqlite import SqliteStore
from tests.store.conftest import fresh_database

NOW = time.time()
# A held call as 0.1 stored it: the agent's headers (a deny-list had filtered them) and the
# peer, host and scheme from which the forwarding headers were made at send time.
LEGACY_CALL = orjson.dumps({"upstream": "billing", "method": "POST", "path": "/v1/refunds",
                            "query": "", "headers": {"X-Forwarded-User": "admin"},
                            "client_ip": "10.0.0.1", "host": "gw", "scheme": "http",
                            "run_id": None, "spend": {}})
INSERT = ("INSERT INTO approvals (id, status, decision_id, tool, args, call_hash, principal, "
          "sub, tenant, reasons, approvals_required, approver_roles, created_at, expires_at, "
          "updated_at, call, body, call_digest, idempotency_key, resend_safe) VALUES "
          "(?, ?, 'req_1', 'create_refund_request', ?, 'h', ?, 'agent', 'acme', ?, 1, ?, ?, ?, "
          "?, ?, ?, 'd', ?, 1)")


def legacy_rows() -> list[tuple[object, ...]]:
    args, principal = orjson.dumps({"amount": 250}), orjson.dumps({"sub": "agent",
                                                                    "tenant": "acme"})
    return [(approval_id, status, args, principal, b'["over_limit"]', b"[]", NOW, NOW + 60,
             NOW, LEGACY_CALL, b"{}", key)
            for approval_id, status, key in (("apr_pending", "pending", "k-pending"),
                                             ("apr_approved", "approved", "k-approved"),
                                             ("apr_sending", "executing", "k-sending"),
                                             ("apr_done", "executed", "k-done"))]


def check(approvals: dict[str, ApprovalStatus]) -> None:
    # Nothing held by 0.1 is ever sent again: it was stored without the headers an
    # approver must see, and without the Idempotency-Key an upstream dedups on.
    assert approvals == {"apr_pending": ApprovalStatus.EXPIRED,
                         "apr_approved": ApprovalStatus.NOT_SENT,
                         "apr_sending": ApprovalStatus.OUTCOME_UNKNOWN,
                         "apr_done": ApprovalStatus.EXECUTED}


async def test_sqlite_from_0_1(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in migrations(Dialect.SQLITE)[:2]:  # what 0.1 created
        for sql in step:
            conn.execute(sql)
    conn.execute("PRAGMA user_version = 2")
    conn.executemany(INSERT, legacy_rows())
    conn.close()
    store = await SqliteStore.open(path)
    try:
        check({a.id: a.status for a in await store.list_approvals()})
        state = await store.key_state(Scope("acme", "create_refund_request", "k-done"))
        assert state is not None
        assert (state.status, state.approval and state.approval.id) == (KeyStatus.HELD,
                                                                         "apr_done")
        # The agent's retry with the same call still finds its answer.
        retry = KeyClaim(state.scope, "new-style-fingerprint", "req_2", NOW + 60, "h")
        assert judge(state, retry, NOW) is state
        old = await store.get_approval("apr_done")
        assert old is not None
        assert old.plan.headers == {"X-Forwarded-User": "admin"}  # shown as it was stored
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(
            migrations(Dialect.SQLITE))


async def test_postgres_from_0_1() -> None:
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            # 0.1 applied the first two migrations as one, and recorded version 1.
            await conn.execute("CREATE TABLE toolgate_schema (version INTEGER NOT NULL)")
            for step in migrations(Dialect.POSTGRES)[:2]:
                for sql in step:
                    await conn.execute(sql)
            await conn.execute("INSERT INTO toolgate_schema (version) VALUES (1)")
            numbered = INSERT
            for i in range(1, INSERT.count("?") + 1):
                numbered = numbered.replace("?", f"${i}", 1)
            await conn.executemany(numbered, legacy_rows())
        finally:
            await conn.close()
        store = await PostgresStore.open(dsn)
        try:
            check({a.id: a.status for a in await store.list_approvals()})
            state = await store.key_state(Scope("acme", "create_refund_request", "k-pending"))
            assert state is not None
            assert state.status is KeyStatus.HELD
        finally:
            await store.close()
        reopened = await PostgresStore.open(dsn)  # a second start applies nothing again
        await reopened.close()


# Calls version 5 ended `failed`, as its executor wrote them: (id, reason, error, attempts,
# status now, error now). `attempts` counts claims: 1 the first, +1 each takeover.
KILLED = "not sent: calls are stopped by the kill switch global: x"
OVER = "not sent: run run-1 is over its cap"
DOWN = "not sent: upstream billing could not be reached: ClientConnectorError"
GONE = "not sent: the tool or its upstream is no longer configured"
TAMPERED = "the stored call failed its integrity check; not sent"
FAILED, NOT_SENT = ApprovalStatus.FAILED, ApprovalStatus.NOT_SENT
FAILED_IN_5 = [
    ("apr_killed", KILLED, "killed", 1, NOT_SENT, "killed"),
    ("apr_budget", OVER, "budget_exceeded", 1, NOT_SENT, "budget_exceeded"),
    ("apr_down", DOWN, "upstream_error", 1, NOT_SENT, "upstream_error"),
    ("apr_gone", GONE, None, 1, NOT_SENT, "tool_not_allowed"),
    ("apr_tampered", TAMPERED, None, 1, NOT_SENT, "internal_error"),
    # Failed by migration 3 (approved, never claimed).
    ("apr_legacy", "not sent: held by an earlier gateway version, which did not show every "
     "header", "not_sent", 0, NOT_SENT, "internal_error"),
    ("apr_timeout", "upstream billing did not answer within 5000 ms", "upstream_timeout", 1,
     FAILED, "upstream_timeout"),
    ("apr_reset", "upstream billing failed: ServerDisconnectedError", "upstream_error", 1,
     FAILED, "upstream_error"),
    # Resends by a takeover that a rule stopped: the instance that stopped may have sent
    # them, so they are not known not to have run; they stay as they were.
    ("apr_resent_killed", KILLED, "killed", 2, FAILED, "killed"),
    ("apr_resent_budget", OVER, "budget_exceeded", 2, FAILED, "budget_exceeded"),
    ("apr_resent_down", DOWN, "upstream_error", 3, FAILED, "upstream_error"),
    ("apr_resent_gone", GONE, None, 2, FAILED, None),
    ("apr_resent_tampered", TAMPERED, None, 2, FAILED, None),
]
UPDATE_FAILED = ("UPDATE approvals SET status = 'failed', reason = ?, error = ?, attempts = ? "
                 "WHERE id = ?")


def failed_rows() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    args, principal = orjson.dumps({"amount": 250}), orjson.dumps({"sub": "agent",
                                                                    "tenant": "acme"})
    inserts: list[tuple[object, ...]] = [
        (approval_id, "pending", args, principal, b'["over_limit"]', b"[]", NOW, NOW + 60, NOW,
         LEGACY_CALL, b"{}", f"k-{approval_id}") for approval_id, *_ in FAILED_IN_5]
    updates: list[tuple[object, ...]] = [
        (reason, error, attempts, approval_id)
        for approval_id, reason, error, attempts, *_ in FAILED_IN_5]
    return inserts, updates


def check_failed(found: dict[str, tuple[ApprovalStatus, str | None]]) -> None:
    assert found == {approval_id: (status, code)
                     for approval_id, _, _, _, status, code in FAILED_IN_5}


async def test_sqlite_from_5_not_sent_is_told_from_failed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in migrations(Dialect.SQLITE)[:5]:
        for sql in step:
            conn.execute(sql)
    conn.execute("PRAGMA user_version = 5")
    inserts, updates = failed_rows()
    conn.executemany(INSERT, inserts)
    conn.executemany(UPDATE_FAILED, updates)
    conn.close()
    store = await SqliteStore.open(path)
    try:
        check_failed({a.id: (a.status, a.error) for a in await store.list_approvals()})
    finally:
        await store.close()


async def test_postgres_from_5_not_sent_is_told_from_failed() -> None:
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE toolgate_schema (version INTEGER NOT NULL)")
            for number, step in enumerate(migrations(Dialect.POSTGRES)[:5], start=1):
                for sql in step:
                    await conn.execute(sql)
                await conn.execute("INSERT INTO toolgate_schema (version) VALUES ($1)", number)
            inserts, updates = failed_rows()
            await conn.executemany(numbered(INSERT), inserts)
            await conn.executemany(numbered(UPDATE_FAILED), updates)
        finally:
            await conn.close()
        store = await PostgresStore.open(dsn)
        try:
            check_failed({a.id: (a.status, a.error) for a in await store.list_approvals()})
        finally:
            await store.close()


def numbered(sql: str) -> str:
    for i in range(1, sql.count("?") + 1):
        sql = sql.replace("?", f"${i}", 1)
    return sql
