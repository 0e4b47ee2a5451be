"""Canonical encodings: the one JSON form every hash is taken over, and RFC 3339 times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys, no insignificant whitespace) for hashing."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def rfc3339(epoch: float) -> str:
    """Seconds since the epoch as `2026-12-02T17:33:53Z`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def rfc3339_precise(epoch: float) -> str:
    """Seconds since the epoch with microseconds, as `2026-12-02T17:33:53.123456Z`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
