"""An audit log writing to a real file in the test's directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.log import AuditLog
from gateway.audit.settings import AuditSettings


class Boom(Exception):
    pass


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "toolgate.jsonl"


@pytest.fixture
def audit_log(audit_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(AuditSettings(file=audit_path))
    yield log
    log.close()


def read_records(path: Path, *, audit_events: bool = False) -> list[dict[str, Any]]:
    """The file's records; without the log's own `audit` records (opened, closed…) unless
    asked for."""
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    return [r for r in records if audit_events or r.get("kind") != "audit"]
