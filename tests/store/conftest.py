"""The same store suite against SQLite and against PostgreSQL.

PostgreSQL runs when TEST_POSTGRES_DSN names a server where the user may create databases
(CI sets it to the machine's server); each test gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from gateway.store.base import StateStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

DSN_VARIABLE = "TEST_POSTGRES_DSN"
HOW = (f"PostgreSQL tests need {DSN_VARIABLE}, e.g. "
       f"{DSN_VARIABLE}=postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_dsn() -> str | None:
    return os.environ.get(DSN_VARIABLE) or None


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped afterwards; its DSN."""
    dsn = postgres_dsn()
    if dsn is None:
        pytest.skip(HOW)
    name = f"toolgate_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    if request.param == "sqlite":
        sqlite = await SqliteStore.open(tmp_path / "state.db")
        yield sqlite
        await sqlite.close()
        return
    async with fresh_database() as dsn:
        postgres = await PostgresStore.open(dsn)
        yield postgres
        await postgres.close()
