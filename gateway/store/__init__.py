"""State stores: one interface (`StateStore`); SQLite (the embedded default) and
PostgreSQL (shared by every replica)."""

from __future__ import annotations

from gateway.config import Settings
from gateway.core.errors import StoreUnavailable
from gateway.store.base import StateStore
from gateway.store.sqlite import SqliteStore

__all__ = ["StateStore", "open_store"]


async def open_store(settings: Settings) -> StateStore:
    """The store named by `settings.store`."""
    path = settings.sqlite_path
    if path is not None:
        return await SqliteStore.open(path)
    if settings.store.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore  # noqa: PLC0415 (asyncpg on demand)

        return await PostgresStore.open(settings.store)
    raise StoreUnavailable(f"store {settings.store.split(':', 1)[0]}:// is not supported")
