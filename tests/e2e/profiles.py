"""The end-to-end gateways, in one place: each profile is a `toolgate serve` config the
tests run as a subprocess (see `harness.Gateway`), named for what it is there to show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHIPPED_SPECS = ROOT / "tool_specs"
SHIPPED_POLICIES = ROOT / "policies"
# Run budgets of the state profile: a few calls per run, a spend cap, tenant overrides.
BUDGETS = {"max_tool_calls": 8, "max_calls_per_tool": {"default": 50, "keyed_post": 5},
           "max_spend": {"amount": 100},
           "tenants": {"globex": {"max_spend": {"amount": 10}},
                       "initech": {"max_tool_calls": 1000}}}


def default_gateway(directory: Path, key: DevKey, upstream: Upstream) -> Gateway:
    """The shipped specs and policies, plus the echo tools of the tests."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs"], policies=[SHIPPED_POLICIES])


def approvals_gateway(directory: Path, key: DevKey, upstream: Upstream,
                      **approvals: Any) -> Gateway:
    """Tools whose policy holds every call; fast sweeps; a webhook to the upstream."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs", HERE / "specs_approvals"],
                   policies=[SHIPPED_POLICIES, HERE / "policies_approvals"],
                   extra={"approvals": {"sweep_interval_ms": 100, "wait_ms": 3000,
                                        "webhook": {"url": f"{upstream.url}/hooks/approvals",
                                                    "backoff_ms": 50},
                                        **approvals}})


def state_gateway(directory: Path, key: DevKey, upstream: Upstream, **extra: Any) -> Gateway:
    """Idempotency, budgets and kill switches; `store=` a DSN to share PostgreSQL."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs_state", HERE / "specs_approvals"],
                   policies=[SHIPPED_POLICIES, HERE / "policies_approvals"],
                   # lease_seconds 1: the lease must still outlast each tool's timeout
                   extra={"budgets": BUDGETS, "killswitch": {"poll_ms": 200},
                          "idempotency": {"lease_seconds": 1},
                          "approvals": {"sweep_interval_ms": 100}, **extra})


def broken_policy_gateway(directory: Path, key: DevKey, upstream: Upstream,
                          **extra: Any) -> Gateway:
    """A policy that fails in every way a policy can (tests/e2e/policies_broken)."""
    return Gateway(directory, key, upstream.url, tool_specs=[HERE / "specs"],
                   policies=[HERE / "policies_broken"], extra=extra)


# Small limits, so the tests of slow and hostile clients take moments, not minutes.
TIGHT_LIMITS = {"header_timeout_ms": 500, "body_timeout_ms": 500, "idle_timeout_ms": 1000,
                "send_timeout_ms": 1000, "max_connections": 8, "admin_max_connections": 4,
                "max_headers": 32}


def hardened_gateway(directory: Path, key: DevKey, upstream: Upstream) -> Gateway:
    """The default tools, with tight connection limits and the state tools' budgets."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs", HERE / "specs_state"],
                   policies=[SHIPPED_POLICIES],
                   extra={"limits": TIGHT_LIMITS, "budgets": BUDGETS})


def shared_admin_gateway(directory: Path, key: DevKey, upstream: Upstream) -> Gateway:
    """Tight limits, and an admin port with room for eight connections, two per client:
    one client (here every test client: loopback is one) cannot fill it."""
    return Gateway(directory, key, upstream.url, tool_specs=[SHIPPED_SPECS, HERE / "specs"],
                   policies=[SHIPPED_POLICIES],
                   extra={"limits": {**TIGHT_LIMITS, "admin_max_connections": 8,
                                     "admin_max_connections_per_client": 2}})


def chaos_gateway(directory: Path, key: DevKey, upstream: Upstream, faulty_url: str,
                  **extra: Any) -> Gateway:
    """The approval and state tools, plus a tool on an upstream that misbehaves."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs", HERE / "specs_approvals",
                               HERE / "specs_chaos"],
                   policies=[SHIPPED_POLICIES, HERE / "policies_approvals"],
                   extra={"approvals": {"sweep_interval_ms": 100, "takeover_after_ms": 1000,
                                        "wait_ms": 0}, **extra},
                   extra_upstreams={"faulty": faulty_url})


def audit_gateway(directory: Path, key: DevKey, upstream: Upstream, *,
                  tool_specs: tuple[Path, ...] = (), wait_ms: int = 3000,
                  **audit: Any) -> Gateway:
    """The echo and approval tools with no webhook (the upstream sees tool calls and nothing
    else), and `audit:` as given on top of the harness's file. Its audit file is what the
    tests delete, rename, replace, truncate or make unwritable under it."""
    return Gateway(directory, key, upstream.url,
                   tool_specs=[SHIPPED_SPECS, HERE / "specs", HERE / "specs_approvals",
                               *tool_specs],
                   policies=[SHIPPED_POLICIES, HERE / "policies_approvals"],
                   extra={"approvals": {"sweep_interval_ms": 100, "wait_ms": wait_ms},
                          "audit": {"file": "audit/toolgate.jsonl", **audit}})
