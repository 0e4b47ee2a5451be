"""State stores: one interface (`StateStore`), SQLite as the embedded default."""

from __future__ import annotations

from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.store.base import Approval, ApprovalStatus, StateStore, StoredCall
from gateway.store.sqlite import SqliteStore

__all__ = ["Approval", "ApprovalStatus", "StateStore", "StoredCall", "open_store"]


async def open_store(settings: Settings) -> StateStore:
    """The store named by `settings.store`."""
    path = settings.sqlite_path
    if path is None:
        raise StoreUnavailable(f"store {settings.store.split(':', 1)[0]}:// is not supported "
                               "by this version; use sqlite:///PATH")
    return await SqliteStore.open(path)
