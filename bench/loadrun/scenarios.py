"""The four calls the bench measures, and what each must be answered with.

Every scenario is the same refund (the peers' ~240-byte body) with one thing changed, so
the difference between two rows is the gateway's path, not the payload. The limits in
`bench/config/data.yaml` make 120 EUR allowed and 250 EUR held; a tenant_id other than the
token's tenant is denied by the shipped policy's tenant scoping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

REFUND: dict[str, Any] = {
    "tenant_id": "acme", "order_id": "ord_8f3a2b1c9d", "amount": 120, "currency": "EUR",
    "reason": "damaged", "customer_email": "ada@example.org",
    "notes": "Parcel arrived crushed; photos in ticket 48213; approved by tier-1 agent. "
             "sess_b2c3d4e5f6a7"}
RUN_ID = "bench-run-1"   # one run for every call: its budget is reserved on each


class Key(StrEnum):
    """What a load generator sends as `Idempotency-Key` (`bench/lua/scenario.lua`)."""

    FRESH = "fresh"   # a new key per request: each call claims and stores one (wrk only)
    FIXED = "fixed"   # one key, completed before the run: every call is a replay
    NONE = "none"     # no key (hey cannot vary a header; the tool's key is optional)


@dataclass(frozen=True)
class Scenario:
    name: str
    args: dict[str, Any]
    expected: frozenset[int]   # any other status is an error of the run
    wrk_key: Key
    hey_key: Key
    forwarded: bool            # whether each call reaches the upstream
    direct: bool               # whether sending the body straight to nginx means anything


ALLOW = Scenario("allow", REFUND, frozenset({200, 201}), Key.FRESH, Key.NONE, forwarded=True,
                 direct=True)
DENY = Scenario("deny", {**REFUND, "tenant_id": "globex"}, frozenset({403}), Key.FRESH,
                Key.NONE, forwarded=False, direct=False)
HOLD = Scenario("hold", {**REFUND, "amount": 250}, frozenset({202}), Key.FRESH, Key.NONE,
                forwarded=False, direct=False)
REPLAY = Scenario("replay", REFUND, frozenset({200, 201}), Key.FIXED, Key.FIXED,
                  forwarded=False, direct=False)
SCENARIOS = (ALLOW, DENY, HOLD, REPLAY)
