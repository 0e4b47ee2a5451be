"""Replay (DESIGN §13): recorded calls re-decided by a candidate bundle, offline.

A decision record holds the policy's input document as the policy saw it (`input`,
redacted). Replay evaluates the candidate policies (and data) on that document — with the
`tool` part rebuilt from the candidate tool specs when they are given — and compares the
candidate's action with the one the recorded policy took. A call whose record has no
`input` never reached the policy (refused before it), and one answered by `fail_open`
got no decision: neither is replayed. Redacted values are replayed as recorded (a rule
that reads one sees the mask or the token), and the report says how many calls had any.

The recorded policy's action is the record's `action` when the policy decided (stage
`policy`); a call the policy allowed and a later stage refused (stage `commit`: its key or
its run's budget) was allowed by the policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.query import OnBad, Window, call_fields, needle, read
from gateway.bundle.specs import ToolSpec, load_specs
from gateway.core.decision import Action
from gateway.core.policy_input import tool_input
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.sources import load_sources

EXAMPLES = 3          # decision_ids kept per transition
TOP_REASONS = 5       # reasons kept per transition


@dataclass
class Transition:
    calls: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "examples": self.examples,
                "top_reasons": [{"reason": r, "calls": n}
                                for r, n in self.reasons.most_common(TOP_REASONS)]}


@dataclass
class Replay:
    """What a candidate would have done to the recorded calls."""
    policy_revision: str
    spec_revision: str | None
    decisions: int = 0          # decision records read
    replayed: int = 0           # of which had an input to replay
    not_replayable: int = 0     # refused before the policy, or answered by fail_open
    with_redactions: int = 0    # replayed calls with a redacted value in their input
    tools_removed: int = 0      # replayed calls of a tool the candidate specs do not have
    unchanged: Counter[str] = field(default_factory=Counter)    # by action
    changed: dict[str, Transition] = field(default_factory=dict)  # "allow→deny": …

    @property
    def changes(self) -> int:
        return sum(t.calls for t in self.changed.values())

    def as_json(self) -> dict[str, Any]:
        return {"policy_revision": self.policy_revision, "spec_revision": self.spec_revision,
                "decisions": self.decisions, "replayed": self.replayed,
                "not_replayable": self.not_replayable,
                "with_redactions": self.with_redactions, "tools_removed": self.tools_removed,
                "changes": self.changes, "unchanged": dict(self.unchanged),
                "transitions": {k: t.as_json() for k, t in sorted(self.changed.items())}}


class Candidate:
    """The candidate bundle: its policies and data compiled, and its tool specs if given.
    Raises `LoadErrors` like `toolgate check` would."""

    def __init__(self, policies: Sequence[Path], specs: Sequence[Path] = (),
                 query: str = "data.toolgate.decision") -> None:
        self.sources = load_sources(policies)
        # The gateway's own engine, decided with as at start (offline: no time limit).
        self.engine = EmbeddedEngine(self.sources, query, timeout_ms=60_000)
        spec_set = load_specs(specs) if specs else None
        self.tools: Mapping[str, ToolSpec] | None = spec_set.tools if spec_set else None
        self.spec_revision = spec_set.revision if spec_set else None


def recorded_action(record: Mapping[str, Any]) -> str | None:
    """The action the recorded policy took, or None when it took none."""
    if not isinstance(record.get("input"), dict) or "fail_open" in (record.get("reasons") or ()):
        return None
    stage = record.get("stage")
    if stage == "commit":
        return str(Action.ALLOW)      # only a call about to be forwarded reaches commit
    if stage == "policy" and record.get("code") != "policy_unavailable":
        action = record.get("action")
        return action if action in tuple(str(a) for a in Action) else None
    return None


def replay(paths: Sequence[Path], candidate: Candidate, on_bad: OnBad, *,
           window: Window | None = None, tools: Iterable[str] = (),
           tenants: Iterable[str] = ()) -> Replay:
    tools, tenants = frozenset(tools), frozenset(tenants)
    needles = [[b'"kind":"decision"']]
    if tools:
        needles.append([needle(t) for t in tools])
    if tenants:
        needles.append([needle(t) for t in tenants])
    out = Replay(policy_revision=candidate.sources.revision,
                 spec_revision=candidate.spec_revision)
    for _raw, record in read(paths, on_bad, window=window, needles=needles):
        if record.get("kind") != "decision" or not _wanted(record, tools, tenants):
            continue
        out.decisions += 1
        before = recorded_action(record)
        if before is None:
            out.not_replayable += 1
            continue
        _one(out, candidate, record, before)
    return out


def _wanted(record: Mapping[str, Any], tools: frozenset[str], tenants: frozenset[str]) -> bool:
    fields = call_fields(record)
    return ((not tools or fields["tool"] in tools)
            and (not tenants or fields["tenant"] in tenants))


def _one(out: Replay, candidate: Candidate, record: Mapping[str, Any], before: str) -> None:
    input_doc: dict[str, Any] = dict(record["input"])
    out.replayed += 1
    if record.get("redacted"):
        out.with_redactions += 1
    if candidate.tools is not None:
        spec = candidate.tools.get(str(record.get("tool")))
        if spec is None:   # the candidate has no such tool: the call would be refused
            out.tools_removed += 1
            _count(out, record, before, str(Action.DENY), ["tool_not_allowed"])
            return
        input_doc["tool"] = tool_input(spec)
    decision = candidate.engine.decide_now(input_doc)
    _count(out, record, before, str(decision.action), list(decision.reasons))


def _count(out: Replay, record: Mapping[str, Any], before: str, after: str,
           reasons: list[str]) -> None:
    if before == after:
        out.unchanged[after] += 1
        return
    key = f"{before}→{after}"
    transition = out.changed.setdefault(key, Transition())
    transition.calls += 1
    for reason in reasons:
        transition.reasons[reason.split(":", 1)[0]] += 1
    decision_id = record.get("decision_id")
    if isinstance(decision_id, str) and len(transition.examples) < EXAMPLES:
        transition.examples.append(decision_id)
