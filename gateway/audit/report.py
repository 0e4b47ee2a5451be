"""The seed's numbers per tool and period, from the audit log (`toolgate audit report`).

One pass (`gateway.audit.query.read`) keeping per (period, tool) only counters, the samples
of the percentiles and each run's spend. Each number counts in the UTC period of the record
it comes from; percentiles are nearest-rank (the ⌈p·n/100⌉-th smallest sample).

- calls: decision records. validity: `args_valid` true / (true + false); a record older
  than that field is valid with `args`, invalid when refused `schema_invalid`, else
  unchecked (refused before the schema was looked at).
- forwarded: outcomes of an `allow` decision (shadow included), or of a held call's
  execution that reached the upstream (a status, `upstream_error` or `upstream_timeout`).
  success: status 2xx and `output_valid` not false; post-condition: `output_valid` true /
  not null.
- approvals: per `approval_id` the last of approved/rejected/expired; rate = approved /
  decided; wait = its `ts` minus the `queued` one's (a pending call counts when queued).
- time to safe fallback: `latency_ms.total` of deny and require_approval decisions.
- denials: deny decisions by `code`; `policy_denied` also by its first reason's rule.
- spend per run: per `run_id`, the `spend` of forwarded calls (not shadow; executed held
  calls too) unless the outcome says nothing was sent (that spend is given back).

An outcome is joined to its decision by `decision_id` (a held call's execution by
`approval_id`); the decisions awaiting one are bounded (`query.JOIN_LIMIT`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from gateway.audit import query as q
from gateway.audit.query import OnBad, Window, ts_of
from gateway.audit.stats import FINAL, Stats, period_of

PERIODS = ("hour", "day", "week", "month", "all")
ALL_TOOLS = "*"
NO_TOOL = "-"          # a request refused before a tool was found
_ATTEMPTED = ("upstream_error", "upstream_timeout")


class _Call(NamedTuple):
    tool: str
    run_id: str | None
    spend: Mapping[str, float] | None


@dataclass(slots=True)
class _Approval:
    tool: str
    queued: str | None = None
    final: str | None = None
    final_ts: str | None = None


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


class Report:
    """Feed it records in the order `query.read` gives them (`add`), then read the numbers
    (`finish`)."""

    def __init__(self, period: str = "day", tools: Iterable[str] = ()) -> None:
        self.period = period
        self.tools = frozenset(tools)
        self.groups: dict[tuple[str, str], Stats] = {}
        self._calls: OrderedDict[str, _Call] = OrderedDict()   # allow decisions, by id
        self._held: OrderedDict[str, _Call] = OrderedDict()    # held calls, by approval id
        self._executions: OrderedDict[tuple[str, Any], None] = OrderedDict()
        self._approvals: dict[str, _Approval] = {}

    def _wanted(self, tool: str) -> bool:
        return not self.tools or tool in self.tools

    def _group(self, ts: str | None, tool: str) -> Stats:
        key = (period_of(ts, self.period), tool)
        stats = self.groups.get(key)
        if stats is None:
            stats = self.groups[key] = Stats()
        return stats

    def add(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        count = self._decision if kind == "decision" else self._outcome \
            if kind == "outcome" else self._approval if kind == "approval" else None
        if count is not None:
            count(record)

    def _decision(self, r: Mapping[str, Any]) -> None:
        tool = r.get("tool") or NO_TOOL
        if not self._wanted(tool):
            return
        g = self._group(ts_of(r), tool)
        action, shadow = r.get("action"), r.get("shadow") is True
        g.calls += 1
        g.actions[str(action)] += 1
        g.shadow += shadow
        valid = q.args_valid(r)
        g.validity["unchecked" if valid is None else "valid" if valid else "invalid"] += 1
        if action in ("deny", "require_approval"):
            latency = r.get("latency_ms")
            total = latency.get("total") if isinstance(latency, dict) else None
            if isinstance(total, int | float):
                g.fallback_ms.append(float(total))
        if action == "deny":
            code = str(r.get("code") or "-")
            g.denials[code] += 1
            reasons = r.get("reasons")
            if code == "policy_denied" and isinstance(reasons, list) and reasons:
                g.policy_denials[str(reasons[0]).split(":", 1)[0].strip()] += 1
        # Only a call about to be forwarded is waited for: not a shadow call, not a replay.
        if action == "allow" and not shadow and r.get("stage") != "idempotency":
            _remember(self._calls, r.get("decision_id"), tool, r)
        elif action == "require_approval" and r.get("approval_id") not in self._held:
            _remember(self._held, r.get("approval_id"), tool, r)

    def _outcome(self, r: Mapping[str, Any]) -> None:
        approval_id, upstream_status = r.get("approval_id"), r.get("upstream_status")
        if isinstance(approval_id, str):        # a held call's execution
            # A finish retried after its store write failed writes its outcome again (the
            # same attempt): one execution, counted once.
            attempt = (approval_id, r.get("attempt"))
            if attempt in self._executions:
                return
            _put(self._executions, attempt, None)
            sent = r.get("sent")
            if sent is False or (sent is None and upstream_status is None
                                 and r.get("error") not in _ATTEMPTED):
                return                          # never left the gateway (killed, budget…)
            call = self._held.get(approval_id)
            # The executor gives back the spend of a call it could not send.
            spent = sent is True or not str(r.get("reason") or "").startswith("not sent")
            if spent:
                self._held.pop(approval_id, None)
        else:
            decision_id = r.get("decision_id")
            call = self._calls.pop(decision_id, None) if isinstance(decision_id, str) \
                else None
            # A decision not read (or not waited for): its forward has timings or `sent`;
            # an outcome that says queueing failed has neither.
            if call is None and not ("latency_ms" in r or "sent" in r
                                     or upstream_status is not None):
                return
            spent = r.get("sent") is not False
        tool = r.get("tool") or (call.tool if call is not None else NO_TOOL)
        if not self._wanted(tool):
            return
        g = self._group(ts_of(r), tool)
        g.forwarded += 1
        output_valid = r.get("output_valid")
        if isinstance(upstream_status, int) and 200 <= upstream_status < 300 \
                and output_valid is not False:
            g.succeeded += 1
        if isinstance(output_valid, bool):
            g.post_checked += 1
            g.post_passed += output_valid
        if spent and call is not None and call.run_id is not None and call.spend:
            g.spend.setdefault(call.run_id, Counter()).update(call.spend)

    def _approval(self, r: Mapping[str, Any]) -> None:
        event, approval_id = r.get("event"), r.get("approval_id")
        tool = r.get("tool") or NO_TOOL
        if event not in ("queued", *FINAL) or not isinstance(approval_id, str) \
                or not self._wanted(tool):
            return
        held = self._approvals.get(approval_id)
        if held is None:
            held = self._approvals[approval_id] = _Approval(tool)
        if event == "queued":
            held.queued = held.queued or ts_of(r)
        else:
            held.final, held.final_ts = str(event), ts_of(r)

    def finish(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The numbers per (period, tool), and per period for all tools together."""
        for held in self._approvals.values():
            if held.final is None:
                self._group(held.queued, held.tool).approvals["pending"] += 1
                continue
            g = self._group(held.final_ts, held.tool)
            g.approvals[held.final] += 1
            if held.queued is not None and held.final_ts is not None:
                g.waits_s.append(_epoch(held.final_ts) - _epoch(held.queued))
        self._approvals.clear()
        totals: dict[str, Stats] = {}
        for (period, _tool), stats in self.groups.items():
            totals.setdefault(period, Stats()).merge(stats)
        groups = [{"period": p, "tool": t, **s.as_dict()}
                  for (p, t), s in sorted(self.groups.items())]
        return groups, [{"period": p, "tool": ALL_TOOLS, **s.as_dict()}
                        for p, s in sorted(totals.items())]


def _remember(pending: OrderedDict[str, _Call], key: Any, tool: str,
              decision: Mapping[str, Any]) -> None:
    if not isinstance(key, str):
        return
    run_id = decision.get("run_id")
    _put(pending, key, _Call(tool, run_id if isinstance(run_id, str) else None,
                             q.spend_of(decision)))


def _put(bounded: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    """Remember, forgetting the oldest past `query.JOIN_LIMIT`."""
    bounded[key] = value
    if len(bounded) > q.JOIN_LIMIT:
        bounded.popitem(last=False)


def report(paths: Sequence[Path], on_bad: OnBad, *, period: str = "day",
           window: Window | None = None,
           tools: Iterable[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read `paths` and count: (per period and tool, per period)."""
    tools = frozenset(tools)
    # An outcome may name no tool: it is matched through its decision.
    needles = [{q.needle(t) for t in tools} | {b'"kind":"outcome"'}] if tools else []
    counting = Report(period, tools)
    for _raw, record in q.read(paths, on_bad, window=window, needles=needles):
        counting.add(record)
    return counting.finish()

