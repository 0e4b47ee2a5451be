"""Session fixtures: one recording upstream and one `toolgate serve` subprocess; and, after
the suite, the search of every byte every gateway wrote for what it must never write."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import ENGINE, STARTED, UPSTREAM_SECRET, Gateway, Upstream, running
from tests.e2e.opa import ENGINES
from tests.e2e.profiles import default_gateway

HERE = Path(__file__).resolve().parent
ALL_SCOPES = ["crm:read", "orders:read", "support:write", "billing:refund", "payroll:write",
              "echo:read", "echo:write"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_engine: about local policy files or the engines "
                            "themselves (it picks its own): run once, not once per engine")


@pytest.fixture(scope="session", params=ENGINES, autouse=True)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The whole end-to-end suite runs once per policy engine: every gateway a test starts
    asks the embedded engine, then an OPA server (the real OPA engine, `tests/opa_server.py`)
    loaded with the same policy files."""
    ENGINE["name"] = request.param
    yield request.param
    ENGINE["name"] = "embedded"
    for gw in STARTED:
        if gw.opa is not None:
            gw.opa.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`one_engine` tests run once: their `engine=opa` copy is deselected."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        opa = callspec is not None and callspec.params.get("engine") == "opa"
        (drop if opa and item.get_closest_marker("one_engine") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def upstream(engine: str) -> Iterator[Upstream]:
    """One per engine: what a test asserts the upstream saw is from its own run."""
    server = Upstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
            upstream: Upstream, engine: str) -> Iterator[Gateway]:
    """The shipped tool specs and policies, plus the test tools in tests/e2e/specs."""
    gw = default_gateway(tmp_path_factory.mktemp(f"gateway-{engine}"), dev_key, upstream)
    with running(gw):
        yield gw


@pytest.fixture(scope="session")
def token(dev_key: DevKey) -> str:
    """A support agent of tenant acme with every scope the tools ask for."""
    return dev_key.token("svc-agent", agent="support-bot", tenant="acme", scopes=ALL_SCOPES)


# Secrets a log line must never hold (a JWT always starts "eyJ", the base64 of '{"').
NEVER_LOGGED = (b"eyJ", UPSTREAM_SECRET.encode(), b"canary-")
# Values of `x-pii` arguments the tests send (`tests/e2e/test_pii.py`): no byte a gateway
# writes may hold one — logs, audit files, the store, webhooks. Those of calls held for
# approval (`PII_HELD_CANARY`) are the one exception: the store keeps the exact held call,
# to be shown to an approver and sent (DESIGN §5); every other byte is searched for them.
PII_CANARY = b"pii-canary-"
PII_HELD_CANARY = b"pii-held-canary-"
EVERYWHERE_NEVER = (*NEVER_LOGGED, PII_CANARY, PII_HELD_CANARY)
STORE_NEVER = (b"eyJ", UPSTREAM_SECRET.encode(), PII_CANARY)
# A token in a binary file: random bytes may spell "eyJ", never a whole JWT header.
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}")
TEXT = (".jsonl", ".log", ".yaml", ".json")


def _found(data: bytes, secrets: tuple[bytes, ...], binary: bool) -> list[bytes]:
    found = [s for s in secrets if s in data and not (binary and s == b"eyJ")]
    if binary and b"eyJ" in secrets and JWT.search(data):
        found.append(b"eyJ")
    return found


def written_leaks(gw: Gateway) -> list[tuple[str, bytes]]:
    """Every secret found in a byte the gateway wrote under its directory: its stdout and
    stderr, its audit files (rotated ones included), its store, as (file, secret). Its keys
    are the test's, not the gateway's writing, and are not searched."""
    leaks: list[tuple[str, bytes]] = []
    for path in sorted(p for p in gw.directory.rglob("*") if p.is_file()):
        relative = path.relative_to(gw.directory)
        if relative.parts[0] == "keys":
            continue
        # The store holds the calls tests hold, canaries of other tests' bodies included.
        secrets = STORE_NEVER if relative.parts[0] == "state" else EVERYWHERE_NEVER
        data = path.read_bytes()
        leaks += [(str(path), s) for s in _found(data, secrets, path.suffix not in TEXT)]
    return leaks


def webhook_leaks(upstream: Upstream) -> list[tuple[str, bytes]]:
    """Every secret found in a webhook the gateways posted to the recording upstream."""
    return [(seen.raw_path, s) for seen in upstream.seen if seen.raw_path.startswith("/hooks/")
            for s in _found(seen.body, EVERYWHERE_NEVER, binary=False)]


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(upstream: Upstream) -> Iterator[None]:
    """After the whole suite: every byte every gateway wrote — stdout and stderr, audit
    files, store files — and every webhook it posted is searched for tokens, the upstream
    credential, the canary strings tests put in bodies and the x-pii values they send. None
    may appear, at any log level (x-pii values of held calls only in the store)."""
    yield
    leaks = []
    for gw in STARTED:
        leaks += written_leaks(gw)
    leaks += webhook_leaks(upstream)
    assert not leaks, leaks
