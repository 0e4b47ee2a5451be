"""Shared fixtures: the repository's paths, a development signing key, and for in-process
tests a settable clock, a recording upstream and a real runtime (`tests.support`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, runtime, upstream_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def dev_key() -> DevKey:
    """An RS256 key pair (kid, private PEM, JWKS) generated once per test session."""
    return DevKey.generate(kid="test-key")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    """A recording upstream on loopback, and its URL."""
    async with upstream_server() as pair:
        yield pair


@pytest.fixture
async def rt(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
             clock: FakeClock) -> AsyncIterator[Runtime]:
    """A real runtime on the shipped specs and policies plus the test tools."""
    async with runtime(tmp_path, dev_key, recorder[1], clock) as built:
        yield built


@pytest.fixture(scope="session")
def agent_token(dev_key: DevKey) -> str:
    """An agent of tenant acme with every scope the tools ask for."""
    return dev_key.token("svc-agent", agent="support-bot", tenant="acme",
                         scopes=["crm:read", "orders:read", "support:write",
                                 "billing:refund", "payroll:write", "echo:read",
                                 "echo:write"])
