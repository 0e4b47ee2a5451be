"""Fixtures of the bundle tests: a live runtime whose policies a test may edit."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def live(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
               clock: FakeClock) -> AsyncIterator[tuple[Runtime, Path]]:
    """A runtime whose policies are a copy the test may edit."""
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       policies=[str(policies)]) as rt:
        yield rt, policies
