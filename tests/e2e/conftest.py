"""Session fixtures: one recording upstream and one `toolgate serve` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import STARTED, UPSTREAM_SECRET, Gateway, Upstream, running
from tests.e2e.profiles import default_gateway

HERE = Path(__file__).resolve().parent
ALL_SCOPES = ["crm:read", "orders:read", "support:write", "billing:refund", "payroll:write",
              "echo:read", "echo:write"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
            upstream: Upstream) -> Iterator[Gateway]:
    """The shipped tool specs and policies, plus the test tools in tests/e2e/specs."""
    gw = default_gateway(tmp_path_factory.mktemp("gateway"), dev_key, upstream)
    with running(gw):
        yield gw


@pytest.fixture(scope="session")
def token(dev_key: DevKey) -> str:
    """A support agent of tenant acme with every scope the tools ask for."""
    return dev_key.token("svc-agent", agent="support-bot", tenant="acme", scopes=ALL_SCOPES)


# Secrets a log line must never hold (a JWT always starts "eyJ", the base64 of '{"').
NEVER_LOGGED = (b"eyJ", UPSTREAM_SECRET.encode(), b"canary-")


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """After the whole suite: every byte every gateway wrote to stdout and stderr is
    searched for tokens, the upstream credential and the canary strings tests put in
    bodies. None may appear, at any log level."""
    yield
    leaks = []
    for gw in STARTED:
        if gw.log_file.exists():
            text = gw.log_file.read_bytes()
            leaks += [(str(gw.log_file), secret) for secret in NEVER_LOGGED if secret in text]
    assert not leaks, leaks
