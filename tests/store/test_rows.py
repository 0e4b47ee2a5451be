"""Rows as domain objects: a status this version does not know — a newer version's, read
during a rolling update — is shown as `outcome_unknown` and can never be moved, voted on or
sent by this version, on either store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from gateway.act.answers import from_held
from gateway.approvals.model import ApprovalStatus
from gateway.approvals.rules import check_vote
from gateway.auth import Principal
from gateway.core.errors import ApprovalNotPending
from gateway.state.idempotency import Scope
from gateway.store.base import StateStore
from gateway.store.postgres import PostgresStore
from gateway.store.rows import approval_status
from gateway.store.sqlite import SqliteStore
from tests.store.conftest import fresh_database
from tests.store.test_contract import NOW, approval, hold

NEWER = "awaiting_second_look"   # a state some later version might add
SetStatus = Callable[[str, str], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_and_raw(request: pytest.FixtureRequest,
                        tmp_path: Path) -> AsyncIterator[tuple[StateStore, SetStatus]]:
    """A store, and a way to write a row's status behind its back (as a newer version)."""
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        sqlite = await SqliteStore.open(path)

        async def set_sqlite(approval_id: str, status: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE approvals SET status = ? WHERE id = ?",
                             (status, approval_id))

        yield sqlite, set_sqlite
        await sqlite.close()
        return
    async with fresh_database() as dsn:
        postgres = await PostgresStore.open(dsn)

        async def set_postgres(approval_id: str, status: str) -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("UPDATE approvals SET status = $1 WHERE id = $2", status,
                                   approval_id)
            finally:
                await conn.close()

        yield postgres, set_postgres
        await postgres.close()


def test_a_known_status_is_read_as_it_is() -> None:
    for status in ApprovalStatus:
        assert approval_status(str(status), "why") == (status, "why")


def test_an_unknown_status_reads_as_outcome_unknown_and_says_so() -> None:
    status, reason = approval_status(NEWER, "needs a second look")
    assert status is ApprovalStatus.OUTCOME_UNKNOWN
    assert reason == (f"stored as '{NEWER}' by a newer gateway version: this one shows it as "
                      "outcome_unknown and never acts on it; needs a second look")
    assert approval_status("\x1b[2J", None)[1] == (
        "stored as '\\x1b[2J' by a newer gateway version: this one shows it as "
        "outcome_unknown and never acts on it")


async def test_a_newer_versions_status_is_shown_and_never_acted_on(
        store_and_raw: tuple[StateStore, SetStatus]) -> None:
    store, set_status = store_and_raw
    await hold(store, approval("apr_new", key="k-new"))
    await set_status("apr_new", NEWER)

    shown = await store.get_approval("apr_new")
    assert shown is not None
    assert shown.status is ApprovalStatus.OUTCOME_UNKNOWN
    assert (shown.reason or "").startswith(f"stored as '{NEWER}' by a newer gateway version")
    assert [a.id for a in await store.list_approvals()] == ["apr_new"]
    state = await store.key_state(Scope("acme", "create_refund_request", "k-new"))
    assert state is not None
    assert state.approval is not None
    assert state.approval.status is ApprovalStatus.OUTCOME_UNKNOWN
    # Its agent's retry is told nobody knows whether it ran, never that it did not.
    reply = from_held(state.approval, "req_2", NOW)
    assert b'"outcome_unknown"' in reply.body

    # The sweeper's queries name the states this version knows: it is never picked up.
    assert await store.in_states(frozenset(ApprovalStatus)) == []
    assert await store.abandoned(NOW + 3600, 0) == []
    # No transition from any known state moves it, whatever the target.
    for to in ApprovalStatus:
        assert await store.transition("apr_new", frozenset(ApprovalStatus), to, NOW) is None
    # A vote is refused (the row reads as final), and changes nothing.
    approver = Principal("approver", None, "acme", frozenset({"toolgate:approve"}), ("r",),
                         None, {})
    with pytest.raises(ApprovalNotPending):
        await store.vote("apr_new", {"sub": "approver"}, None, NOW,
                         check=lambda current: check_vote(current, approver, NOW),
                         record=lambda _: None)
    assert await store.expire_due(NOW + 3600, lambda _: None) == []
    after = await store.get_approval("apr_new")
    assert after is not None
    assert (after.status, after.votes, after.attempts) == (ApprovalStatus.OUTCOME_UNKNOWN, (), 0)

