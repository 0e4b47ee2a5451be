"""Reading audit records back: every record of the given files as a stream — each chain in
its own order, several chains (replicas, `--workers`) merged by time — narrowed by time,
kind, call and principal (`toolgate audit query`; `toolgate audit report` reads through
`read` too).

A month of records can be tens of millions of lines, so nothing is held but the line in
hand: lines are bytes until they are parsed (orjson), and a line that cannot match is
skipped before it is parsed — a value a filter asks for must appear in the line as its JSON
text (the log is written by orjson, which writes every string one way), the `ts` of a line
is found by a byte search, and a rotated file whose name says it was closed before
`--since` is not opened at all. A line that is not a JSON object is handed to `on_bad` and
skipped: judging the log's integrity is `toolgate audit verify`'s work.

Filters on the call (`tool`, `principal` (its `sub`), `tenant`, `action`, `code`) match a
decision record by its own fields; the records that follow it (its outcome, its approval
events) match with it, since an outcome written before the `tool` field existed names no
tool and no outcome names a principal. A later record whose decision was not read (before
`--since`, in a file not given) matches by what it carries itself.
"""

from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.files import chains, lines

OnBad = Callable[[Path, int], None]
JOIN_LIMIT = 262_144    # decisions remembered for their later records; an outcome follows
                        # its decision within the tool's timeout, so this is ample
CALL_FIELDS = ("tool", "principal", "tenant", "action", "code")
_TS = b'"ts":"'
_TS_LEN = 27            # 2026-12-02T22:56:32.486350Z, as the log writes every ts
# A rotated file's name carries the UTC time it was closed (`files.rotated_name`).
_ROTATED = re.compile(r"\.(\d{8}T\d{6}\.\d{6}Z)\.[^.]+$")
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def when(text: str, now: datetime) -> datetime:
    """A time on the command line: RFC 3339 (`2026-12-02T10:00:00Z`; a bare date is its
    midnight UTC; a time without an offset is UTC) or a duration before `now` (`30m`, `24h`,
    `7d`, `1d12h`). Raises `ValueError`."""
    text = text.strip()
    if _DURATION.match(text) and "".join(m.group(0) for m in
                                         _DURATION.finditer(text)) == text:
        seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text))
        return now - timedelta(seconds=seconds)
    moment = _moment(text)
    if moment is None:
        raise ValueError(f"{text!r} is neither an RFC 3339 time nor a duration like "
                         "30m, 24h or 7d")
    return moment


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stamp(moment: datetime) -> str:
    """A time as the log writes `ts`: such strings sort in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts_of(record: Mapping[str, Any]) -> str | None:
    """A record's `ts` in the log's own form (another RFC 3339 form is converted)."""
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    if len(ts) == _TS_LEN and ts.endswith("Z"):
        return ts
    moment = _moment(ts)
    return None if moment is None else stamp(moment)


@dataclass(frozen=True)
class Window:
    """`since` (included) to `until` (excluded), as `ts` strings; None is open."""

    since: str | None = None
    until: str | None = None

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None) -> Window:
        return cls(stamp(since) if since else None, stamp(until) if until else None)

    def holds(self, ts: str | None) -> bool:
        if self.since is None and self.until is None:
            return True
        return ts is not None and (self.since is None or ts >= self.since) and (
            self.until is None or ts < self.until)

    def may_hold(self, line: bytes) -> bool:
        """False only when no `"ts":"…"` in the line (the record's own among them) can be
        in the window."""
        if self.since is None and self.until is None:
            return True
        at = line.find(_TS)
        while at >= 0:
            value = line[at + 6:at + 7 + _TS_LEN]
            if not (len(value) == _TS_LEN + 1 and value.endswith(b'Z"')):
                return True     # a form the byte test cannot judge: parse and see
            if self.holds(value[:-1].decode("ascii", "replace")):
                return True
            at = line.find(_TS, at + 6)
        return False

    def may_hold_file(self, path: Path) -> bool:
        """False for a rotated file closed before `since`: every record in it is older."""
        found = _ROTATED.search(path.name)
        if self.since is None or found is None:
            return True
        closed = datetime.strptime(found.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
        return stamp(closed) >= self.since


def needle(value: str) -> bytes:
    """How a string value appears in a line."""
    return orjson.dumps(value)


def read(paths: Sequence[Path], on_bad: OnBad, *, window: Window | None = None,
         needles: Iterable[Iterable[bytes]] = ()) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each record of `paths` in the window, with its line as read. `needles` are groups of
    byte strings: a line without any string of some group is skipped unparsed.

    Each chain is read in its own order; several chains (replicas, `--workers`) are merged
    by `ts`, so a call held in one chain and executed in another is read in the order it
    happened (a chain's `ts` only goes forward, unless its clock is set back: then the
    merge orders some records wrongly, and loses none)."""
    window = window or Window()
    each = [_read_chain(files, on_bad, window, [tuple(group) for group in needles])
            for files in chains(paths).values()]
    if len(each) == 1:
        yield from each[0]
        return
    yield from heapq.merge(*each, key=lambda item: ts_of(item[1]) or "")


def _read_chain(paths: Sequence[Path], on_bad: OnBad, window: Window,
                groups: list[tuple[bytes, ...]]) -> Iterator[tuple[bytes, dict[str, Any]]]:
    bounded = window.since is not None or window.until is not None
    for path in paths:
        if not window.may_hold_file(path):
            continue
        for number, raw in lines(path):
            if (bounded and not window.may_hold(raw)) or (groups and not _has(raw, groups)):
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                on_bad(path, number)
                continue
            if not isinstance(record, dict):
                on_bad(path, number)
                continue
            if not bounded or window.holds(ts_of(record)):
                yield raw, record


def _has(raw: bytes, groups: list[tuple[bytes, ...]]) -> bool:
    """Whether the line holds a string of every group."""
    for group in groups:
        for wanted in group:
            if wanted in raw:
                break
        else:
            return False
    return True


def call_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The values the call filters look at."""
    principal = record.get("principal")
    principal = principal if isinstance(principal, dict) else {}
    return {"tool": record.get("tool"), "principal": principal.get("sub"),
            "tenant": principal.get("tenant"), "action": record.get("action"),
            "code": record.get("code")}


def args_valid(record: Mapping[str, Any]) -> bool | None:
    """Whether a decision's arguments passed the tool's schema; None if never checked. A
    record older than `args_valid`: valid with `args`, invalid if refused `schema_invalid`
    (`args_outline` alone also marks calls refused before the schema was looked at)."""
    if "args_valid" in record:
        value = record["args_valid"]
        return value if isinstance(value, bool) else None
    if record.get("args") is not None:
        return True
    return False if record.get("code") == "schema_invalid" else None


def spend_of(record: Mapping[str, Any]) -> dict[str, float] | None:
    """What a decision says its call would spend, per currency."""
    spend = record.get("spend")
    if not isinstance(spend, dict):
        return None
    found = {str(k): float(v) for k, v in spend.items()
             if isinstance(v, int | float) and not isinstance(v, bool)}
    return found or None


@dataclass(frozen=True)
class Filters:
    """What `toolgate audit query` keeps. Each set holds the values accepted (any of them);
    an empty set does not filter."""

    window: Window = field(default_factory=Window)
    kinds: frozenset[str] = frozenset()
    decision_ids: frozenset[str] = frozenset()
    call: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def needles(self) -> list[set[bytes]]:
        groups = [{needle(i) for i in self.decision_ids}] if self.decision_ids else []
        if self.kinds:     # with a call filter, a decision is read for its call's records
            joins = {"decision"} if any(self.call.values()) else set()
            groups.append({b'"kind":' + needle(k) for k in self.kinds | joins})
        # A record matched through its decision need not name the value: outcomes and
        # approval events are parsed whatever they hold.
        groups += [{needle(v) for v in values} | {b'"kind":"outcome"', b'"kind":"approval"'}
                   for values in self.call.values() if values]
        return groups


def _own(record: Mapping[str, Any], call: Mapping[str, frozenset[str]]) -> bool:
    fields = call_fields(record)
    return all(fields[name] in values for name, values in call.items() if values)


def query(paths: Sequence[Path], filters: Filters,
          on_bad: OnBad) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """The records that match, in the order `read` gives, with their lines untouched."""
    call = {name: values for name, values in filters.call.items() if values}
    joined: OrderedDict[str, None] = OrderedDict()
    for raw, record in read(paths, on_bad, window=filters.window, needles=filters.needles()):
        kind, decision_id = record.get("kind"), record.get("decision_id")
        if call:
            if kind == "decision":
                hit = _own(record, call)
                if hit and isinstance(decision_id, str):
                    joined[decision_id] = None
                    if len(joined) > JOIN_LIMIT:
                        joined.popitem(last=False)
            else:
                hit = (isinstance(decision_id, str) and decision_id in joined) or _own(
                    record, call)
            if not hit:
                continue
        if filters.kinds and kind not in filters.kinds:
            continue
        if filters.decision_ids and decision_id not in filters.decision_ids:
            continue
        yield raw, record
