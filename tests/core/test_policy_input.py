"""`request.bucket` (DESIGN §2.2): 0-99, fixed by the call, spread over the range."""

from __future__ import annotations

from collections import Counter

from gateway.core.policy_input import bucket


def test_the_same_call_lands_in_the_same_bucket() -> None:
    first = bucket("create_refund", "acme", "agent-1", "refund-ord_1")
    assert bucket("create_refund", "acme", "agent-1", "refund-ord_1") == first
    assert 0 <= first <= 99


def test_every_part_of_the_call_moves_it() -> None:
    calls = [("t", "acme", "a", f"k{n}") for n in range(2000)]
    spread = Counter(bucket(*c) for c in calls)
    assert len(spread) == 100
    assert max(spread.values()) < 3 * 2000 / 100   # roughly uniform
    moved = {bucket("t", "acme", "a", "k"), bucket("u", "acme", "a", "k"),
             bucket("t", "other", "a", "k"), bucket("t", "acme", "b", "k")}
    assert len(moved) > 1
