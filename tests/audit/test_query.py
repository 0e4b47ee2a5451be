"""Reading records back across a chain's files: order, filters, joins, time windows, and
lines that are not records. The files are real files written in the log's own form."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.files import expand, rotated_name
from gateway.audit.query import Filters, Window, args_valid, query, read, spend_of, when

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decision(did: str, seconds: float, tool: str | None = "get_order", *,
             action: str = "allow", code: str | None = None, sub: str = "svc-agent",
             tenant: str = "acme", **extra: Any) -> dict[str, Any]:
    """A decision record shaped like the gateway's."""
    return {"ts": at(seconds), "kind": "decision", "decision_id": did, "trace_id": None,
            "policy_revision": "r1", "principal": {"sub": sub, "agent": "bot", "tenant": tenant},
            "run_id": None, "tool": tool, "action": action, "shadow": False,
            "stage": "policy", "code": code, "message": None,
            "status": 403 if action == "deny" else None, "reasons": [],
            "args": {"order_id": "ord_1"}, "idempotency_key": None, "approval_id": None,
            "latency_ms": {"total": 1.0, "policy": 0.5}, **extra}


def outcome(did: str, seconds: float, upstream: int | None = 200,
            **extra: Any) -> dict[str, Any]:
    """An outcome record as written before outcomes named their tool."""
    return {"ts": at(seconds), "kind": "outcome", "decision_id": did, "trace_id": None,
            "policy_revision": "r1", "status": upstream, "upstream_status": upstream,
            "error": None, "latency_ms": {"total": 3.0, "policy": 0.5, "upstream": 1.5},
            **extra}


def approval(did: str, approval_id: str, event: str, seconds: float,
             tool: str = "create_refund_request", **extra: Any) -> dict[str, Any]:
    return {"ts": at(seconds), "kind": "approval", "decision_id": did,
            "approval_id": approval_id, "event": event, "status": "pending", "tool": tool,
            "principal": {"sub": "svc-agent", "agent": "bot", "tenant": "acme"}, **extra}


def write(path: Path, records: Iterable[Mapping[str, Any] | bytes],
          sort_keys: bool = True) -> Path:
    """JSON lines as the chained log writes them (sorted keys) — or any raw line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    with path.open("wb") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else orjson.dumps(r, option=option) + b"\n")
    return path


class Bad:
    def __init__(self) -> None:
        self.lines: list[tuple[Path, int]] = []

    def __call__(self, path: Path, line: int) -> None:
        self.lines.append((path, line))


def ids(found: Iterable[tuple[bytes, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(r["kind"], r["decision_id"]) for _raw, r in found]


@pytest.fixture
def family(tmp_path: Path) -> Path:
    """A live file with two files rotated out of it, and an unrelated file beside them."""
    live = tmp_path / "audit" / "toolgate.jsonl"
    first = rotated_name(live, (T0 + timedelta(hours=1)).timestamp())
    second = rotated_name(live, (T0 + timedelta(hours=2)).timestamp())
    write(first, [decision("req_a", 0), outcome("req_a", 1)])
    write(second, [decision("req_b", 3700, "create_refund_request", action="deny",
                            code="policy_denied", sub="mallory", tenant="globex")])
    write(live, [decision("req_c", 7300, "create_refund_request",
                          action="require_approval", approval_id="apr_1"),
                 approval("req_c", "apr_1", "queued", 7301),
                 approval("req_c", "apr_1", "approved", 7400),
                 outcome("req_c", 7401, 201, approval_id="apr_1",
                         tool="create_refund_request")])
    write(tmp_path / "audit" / "other.jsonl", [decision("req_z", 0)])
    return live


def test_a_live_file_stands_for_its_family_in_chain_order(family: Path) -> None:
    bad = Bad()
    found = ids(query(expand([family]), Filters(), bad))
    assert found == [("decision", "req_a"), ("outcome", "req_a"), ("decision", "req_b"),
                     ("decision", "req_c"), ("approval", "req_c"), ("approval", "req_c"),
                     ("outcome", "req_c")]
    assert bad.lines == []


def test_the_lines_are_handed_back_untouched(family: Path) -> None:
    raws = [raw for raw, _ in query(expand([family]), Filters(), Bad())]
    on_disk = b"".join(p.read_bytes() for p in expand([family]))
    assert b"".join(raws) == on_disk


def test_a_decision_id_brings_every_record_of_the_call(family: Path) -> None:
    found = ids(query(expand([family]), Filters(decision_ids=frozenset({"req_c"})), Bad()))
    assert found == [("decision", "req_c"), ("approval", "req_c"), ("approval", "req_c"),
                     ("outcome", "req_c")]


def test_an_outcome_that_names_no_tool_follows_its_decision(family: Path) -> None:
    by_tool = Filters(call={"tool": frozenset({"get_order"})})
    assert ids(query(expand([family]), by_tool, Bad())) == [
        ("decision", "req_a"), ("outcome", "req_a")]
    outcomes = Filters(kinds=frozenset({"outcome"}), call={"tool": frozenset({"get_order"})})
    assert ids(query(expand([family]), outcomes, Bad())) == [("outcome", "req_a")]


@pytest.mark.parametrize(("call", "expected"), [
    ({"principal": frozenset({"mallory"})}, ["req_b"]),
    ({"tenant": frozenset({"globex"})}, ["req_b"]),
    ({"action": frozenset({"deny", "require_approval"})}, ["req_b", "req_c"]),
    ({"code": frozenset({"policy_denied"})}, ["req_b"]),
    ({"tool": frozenset({"create_refund_request"}), "action": frozenset({"allow"})}, []),
])
def test_call_filters(family: Path, call: dict[str, frozenset[str]],
                      expected: list[str]) -> None:
    found = query(expand([family]), Filters(kinds=frozenset({"decision"}), call=call), Bad())
    assert [r["decision_id"] for _, r in found] == expected


def test_an_approval_event_matches_by_what_it_carries_when_its_decision_is_not_read(
        family: Path) -> None:
    only_live = Filters(call={"tool": frozenset({"create_refund_request"})},
                        kinds=frozenset({"approval"}))
    found = query([family], only_live, Bad())
    assert [r["event"] for _, r in found] == ["queued", "approved"]


def test_the_time_window_includes_since_and_excludes_until(family: Path) -> None:
    window = Window.of(T0 + timedelta(seconds=1), T0 + timedelta(seconds=7301))
    found = ids(query(expand([family]), Filters(window=window), Bad()))
    assert found == [("outcome", "req_a"), ("decision", "req_b"), ("decision", "req_c")]


def test_a_file_rotated_out_before_since_is_not_opened(family: Path) -> None:
    rotated = expand([family])[0]
    rotated.write_bytes(b"not json, and never read\n")
    bad = Bad()
    found = ids(query(expand([family]), Filters(window=Window.of(T0 + timedelta(seconds=3601),
                                                                 None)), bad))
    assert found[0] == ("decision", "req_b")
    assert bad.lines == []


def test_a_ts_inside_the_arguments_does_not_decide_the_window(tmp_path: Path) -> None:
    # The chained log sorts keys: the arguments' own "ts" comes before the record's.
    inside = decision("req_in", 10, args={"ts": at(-3600)})
    outside = decision("req_out", -3600, args={"ts": at(10)})
    path = write(tmp_path / "a.jsonl", [inside, outside])
    window = Window.of(T0, T0 + timedelta(minutes=1))
    assert ids(read([path], Bad(), window=window)) == [("decision", "req_in")]
    assert window.may_hold(path.read_bytes().splitlines()[0])
    assert not window.may_hold(orjson.dumps(decision("req_x", -60)))


def test_records_in_another_rfc3339_form_are_judged_by_their_time(tmp_path: Path) -> None:
    odd = {**decision("req_odd", 0), "ts": "2026-12-02T11:00:30+01:00"}
    path = write(tmp_path / "a.jsonl", [odd], sort_keys=False)
    window = Window.of(T0, T0 + timedelta(minutes=1))
    assert ids(read([path], Bad(), window=window)) == [("decision", "req_odd")]


def test_a_line_that_is_not_a_record_is_named_and_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [decision("req_1", 0), b"{torn\n", b"[1, 2]\n",
                                        decision("req_2", 1), b'{"kind":"decision"'])
    bad = Bad()
    assert ids(query([path], Filters(), bad)) == [("decision", "req_1"),
                                                  ("decision", "req_2")]
    assert bad.lines == [(path, 2), (path, 3), (path, 5)]


def test_a_filter_skips_lines_that_cannot_match_without_judging_them(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [decision("req_1", 0), b"garbage\n"])
    bad = Bad()
    assert ids(query([path], Filters(decision_ids=frozenset({"req_1"})), bad)) == [
        ("decision", "req_1")]
    assert bad.lines == []


def test_values_are_matched_exactly_not_as_substrings(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [decision("req_1", 0, "get_order_v2"),
                                        decision("req_2", 0, "get_order")])
    found = query([path], Filters(call={"tool": frozenset({"get_order"})}), Bad())
    assert [r["decision_id"] for _, r in found] == ["req_2"]


def test_when_reads_rfc3339_and_durations() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert when("30m", now) == now - timedelta(minutes=30)
    assert when("24h", now) == now - timedelta(days=1)
    assert when("7d", now) == now - timedelta(days=7)
    assert when("1d12h", now) == now - timedelta(hours=36)
    assert when("2026-12-01T08:00:00Z", now) == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert when("2026-12-01T09:00:00+01:00", now) == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert when("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    for text in ("yesterday", "10x", "h24", "-5m", ""):
        with pytest.raises(ValueError, match="neither an RFC 3339 time nor a duration"):
            when(text, now)


def test_args_valid_reads_old_records_too() -> None:
    assert args_valid({"args_valid": True, "args": None}) is True
    assert args_valid({"args_valid": False}) is False
    assert args_valid({"args_valid": None, "args": {"a": 1}}) is None
    assert args_valid({"args": {"a": 1}}) is True
    assert args_valid({"args": None, "args_outline": {}, "code": "schema_invalid"}) is False
    assert args_valid({"args": None, "args_outline": {}, "code": "unauthenticated"}) is None
    assert args_valid({"args": None}) is None


def test_spend_of_keeps_numbers_only() -> None:
    assert spend_of({"spend": {"USD": 12, "EUR": 1.5}}) == {"USD": 12.0, "EUR": 1.5}
    assert spend_of({"spend": {"USD": "12", "flag": True}}) is None
    assert spend_of({"spend": None}) is None
    assert spend_of({}) is None


def test_chains_of_several_workers_are_read_in_time_order(tmp_path: Path) -> None:
    # Held on worker 2 (its chain), executed by worker 1 (the admin port's): read file by
    # file, worker 1's outcome would come before the decision it belongs to.
    first = write(tmp_path / "toolgate.jsonl", [
        decision("req_a", 1), outcome("req_a", 2), outcome("req_held", 5)])
    second = write(tmp_path / "toolgate.w2.jsonl", [
        decision("req_held", 3, sub="mallory"), decision("req_b", 6)])
    assert ids(read([first, second], Bad())) == [
        ("decision", "req_a"), ("outcome", "req_a"), ("decision", "req_held"),
        ("outcome", "req_held"), ("decision", "req_b")]
    by_principal = Filters(call={"principal": frozenset({"mallory"})})
    assert ids(query([first, second], by_principal, Bad())) == [
        ("decision", "req_held"), ("outcome", "req_held")]
