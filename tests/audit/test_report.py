"""`audit report` on a scripted mix of records: every number is what the script implies,
counted by the definitions in `gateway.audit.report` (and the README)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.query import Window
from gateway.audit.report import report
from tests.audit.test_query import T0, Bad, approval, decision, outcome, write

REFUND = "create_refund_request"


def refund(did: str, seconds: float, action: str, latency: float = 1.0,
           **extra: Any) -> dict[str, Any]:
    fields = {"args_valid": True, "latency_ms": {"total": latency, "policy": 0.1}, **extra}
    return decision(did, seconds, REFUND, action=action, **fields)


def held(did: str, approval_id: str, seconds: float, latency: float,
         **extra: Any) -> dict[str, Any]:
    return refund(did, seconds, "require_approval", latency, approval_id=approval_id, **extra)


def without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The record as written before a field existed (or by a path that leaves it out)."""
    return {k: v for k, v in record.items() if k not in keys}


def mix() -> list[dict[str, Any]]:
    """Fifteen refund calls and two lookups, each line saying what it must count as."""
    return [
        # Forwarded: 201 and a passing output; 201 and a failing output; not sent; a 500.
        refund("r1", 0, "allow", run_id="run-1", spend={"amount": 50}),
        outcome("r1", 1, 201, output_valid=True, tool=REFUND),
        refund("r2", 2, "allow", run_id="run-1", spend={"amount": 30}),
        outcome("r2", 3, 201, output_valid=False, tool=REFUND),
        refund("r3", 4, "allow", run_id="run-2", spend={"amount": 100}),
        outcome("r3", 5, None, status=502, error="upstream_error", sent=False, tool=REFUND),
        refund("r4", 6, "allow", run_id="run-2", spend={"amount": 20}),
        outcome("r4", 7, 500, tool=REFUND),
        # Denied: schema (2 ms), two policy rules (4, 6 ms), an old record of a bad token.
        refund("r5", 8, "deny", 2.0, code="schema_invalid", args=None, args_valid=False),
        without(refund("r6", 9, "deny", 4.0, code="policy_denied",
                       reasons=["over_limit: 900 is over 200"]), "args_valid"),
        refund("r7", 10, "deny", 6.0, code="policy_denied",
               reasons=["tenant_mismatch: globex is not acme", "later: ignored"]),
        without(refund("r12", 11, "deny", 1.0, code="unauthenticated", args=None,
                       args_outline={"declared": {}}), "args_valid"),
        # Shadow: counted as a call, never as spend.
        refund("r13", 12, "allow", run_id="run-1", spend={"amount": 999}, shadow=True),
        # Held: approved and executed (60 s), rejected (120 s), expired (30 s), pending,
        # approved but killed before sending (90 s), and one whose queueing failed.
        held("r8", "apr_1", 100, 8.0, run_id="run-1", spend={"amount": 250}),
        approval("r8", "apr_1", "queued", 100),
        held("r9", "apr_2", 101, 10.0), approval("r9", "apr_2", "queued", 101),
        held("r10", "apr_3", 102, 12.0), approval("r10", "apr_3", "queued", 102),
        held("r11", "apr_4", 103, 14.0), approval("r11", "apr_4", "queued", 103),
        held("r14", "apr_5", 104, 16.0, run_id="run-2", spend={"amount": 7}),
        approval("r14", "apr_5", "queued", 104),
        held("r15", "apr_6", 105, 18.0),
        without(outcome("r15", 106, None, status=503, error="store_unavailable"),
                "latency_ms"),
        approval("r10", "apr_3", "expired", 132),
        approval("r8", "apr_1", "approval_vote", 150),
        approval("r8", "apr_1", "approved", 160),
        approval("r8", "apr_1", "executing", 160),
        outcome("r8", 161, 201, approval_id="apr_1", tool=REFUND, attempt=1),
        approval("r14", "apr_5", "approved", 194),
        outcome("r14", 195, None, approval_id="apr_5", tool=REFUND, error="killed",
                reason="not sent: the tool is stopped"),
        approval("r9", "apr_2", "rejected", 221),
        # Lookups: an old outcome naming no tool; a forward that ended in an internal error.
        decision("g1", 300), outcome("g1", 301, 200),
        decision("g2", 302),
        without(outcome("g2", 303, None, error="internal_error"), "latency_ms"),
    ]


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    return write(tmp_path / "audit" / "toolgate.jsonl", mix())


def by_tool(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["tool"]: g for g in groups}


def test_the_scripted_mix(audit_file: Path) -> None:
    bad = Bad()
    groups, totals = report([audit_file], bad)
    assert bad.lines == []
    assert [(g["period"], g["tool"]) for g in groups] == [("2026-12-02", REFUND),
                                                          ("2026-12-02", "get_order")]
    g = by_tool(groups)[REFUND]
    assert g["calls"] == 15
    assert g["actions"] == {"allow": 5, "require_approval": 6, "deny": 4}
    assert g["shadow"] == 1
    assert g["validity"] == {"valid": 13, "invalid": 1, "checked": 14, "unchecked": 1,
                             "rate": 13 / 14}
    assert g["success"] == {"forwarded": 5, "succeeded": 2, "rate": 2 / 5}
    assert g["postcondition"] == {"passed": 1, "checked": 2, "rate": 1 / 2}
    assert g["approvals"] == {"approved": 2, "rejected": 1, "expired": 1, "pending": 1,
                              "decided": 4, "rate": 2 / 4,
                              "wait_s": {"count": 4, "p50": 60.0, "p95": 120.0}}
    assert g["fallback_ms"] == {"count": 10, "p50": 8.0, "p95": 18.0}
    assert g["denials"] == {"policy_denied": 2, "schema_invalid": 1, "unauthenticated": 1}
    assert g["policy_denials"] == {"over_limit": 1, "tenant_mismatch": 1}
    # run-1: 50 + 30 + the executed held 250 (not the shadow 999); run-2: 20 (not the
    # 100 never sent, nor the 7 of the held call killed before sending).
    assert g["spend_per_run"] == {"runs": 2, "currencies": {
        "amount": {"total": 350.0, "mean": 175.0, "max": 330.0}}}

    lookups = by_tool(groups)["get_order"]
    assert (lookups["calls"], lookups["success"]) == (2, {"forwarded": 2, "succeeded": 1,
                                                          "rate": 1 / 2})
    assert lookups["postcondition"]["rate"] is None
    assert lookups["validity"]["rate"] == 1.0

    [total] = totals
    assert total["tool"] == "*"
    assert total["calls"] == 17
    assert total["success"] == {"forwarded": 7, "succeeded": 3, "rate": 3 / 7}
    assert total["spend_per_run"]["runs"] == 2


def test_periods_are_utc_buckets(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [decision("d1", 0), decision("d2", 3600),
                                        decision("d3", 86_400 * 7),
                                        decision("d4", 86_400 * 30)])

    def periods(period: str) -> list[tuple[str, int]]:
        groups, _ = report([path], Bad(), period=period)
        return [(g["period"], g["calls"]) for g in groups]
    assert periods("hour") == [("2026-12-02T10:00Z", 1), ("2026-12-02T11:00Z", 1),
                               ("2026-12-09T10:00Z", 1), ("2027-01-01T10:00Z", 1)]
    assert periods("day") == [("2026-12-02", 2), ("2026-12-09", 1), ("2027-01-01", 1)]
    assert periods("week") == [("2026-W49", 2), ("2026-W50", 1), ("2026-W53", 1)]
    assert periods("month") == [("2026-12", 3), ("2027-01", 1)]
    assert periods("all") == [("all", 4)]


def test_one_tool_and_a_window(audit_file: Path) -> None:
    groups, totals = report([audit_file], Bad(), tools=["get_order"])
    assert [g["tool"] for g in groups] == ["get_order"]
    assert groups[0]["success"]["forwarded"] == 2   # the old outcome, through its decision
    assert totals[0]["calls"] == 2
    window = Window.of(T0 + timedelta(seconds=100), T0 + timedelta(seconds=200))
    groups, _ = report([audit_file], Bad(), window=window, tools=[REFUND])
    [g] = groups
    assert g["calls"] == 6                           # r8 r9 r10 r11 r14 r15
    # Decided in the window: apr_1 and apr_5 approved, apr_3 expired; apr_2 is rejected
    # after it, so pending here.
    assert g["approvals"] | {"wait_s": None} == {
        "approved": 2, "rejected": 0, "expired": 1, "pending": 2, "decided": 3,
        "rate": 2 / 3, "wait_s": None}
    assert g["approvals"]["wait_s"] == {"count": 3, "p50": 60.0, "p95": 90.0}


def test_an_outcome_whose_decision_was_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [
        outcome("x1", 0, 200, tool="get_order"),       # a forward: it has its timings
        without(outcome("x2", 1, None, status=503, error="store_unavailable", tool=REFUND),
                "latency_ms"),
    ])
    groups, _ = report([path], Bad())
    assert [(g["tool"], g["success"]["forwarded"]) for g in groups] == [("get_order", 1)]
