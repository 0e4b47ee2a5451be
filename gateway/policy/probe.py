"""A policy that compiles but can never decide is a load error, not a quiet deny of every
call: the decision rule is evaluated once per tool on a probe input (DESIGN §10).

The probe input has the shape of a real one (DESIGN §2.2): the tool as its spec says, an
agent of a probe tenant holding the tool's scopes, an empty run, and arguments made from
the input schema (each required argument from its `const`, `default`, first `enum` or
`examples` value, else a value of its type). The rule must be defined and well formed
(`PolicyDecision.parse`); which action it takes does not matter. An undefined rule (a
wrong `package`, a rule that never matches), an evaluation error (an unknown function) or
a malformed decision is reported with the tool and what went wrong.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from gateway.bundle.specs import ToolSpec
from gateway.core.decision import PolicyDecision
from gateway.core.errors import LoadError, PolicyUnavailable, ReasonCode
from gateway.core.policy_input import tool_input

_AT = re.compile(r" at (?P<file>\S+):(?P<line>\d+)$")
PROBE_TIME = "2026-01-01T00:00:00.000000Z"
_TYPED: dict[str, Any] = {"string": "probe", "integer": 1, "number": 1, "boolean": False,
                          "array": [], "object": {}, "null": None}


def probe_input(spec: ToolSpec) -> dict[str, Any]:
    schema = getattr(spec.input_validator, "schema", {})
    return {
        "tool": tool_input(spec),
        "args": {name: _value(schema.get("properties", {}).get(name, {}))
                 for name in schema.get("required", [])},
        "principal": {"sub": "probe", "agent": "probe", "tenant": "probe",
                      "scopes": list(spec.scopes), "roles": [], "claims": {"sub": "probe"}},
        "run": {"id": None, "tool_calls": 0, "calls_per_tool": {}, "spent": {}},
        "request": {"id": "req_probe", "method": spec.method, "path": spec.route.text,
                    "idempotency_key": None, "time": PROBE_TIME, "source_ip": "127.0.0.1",
                    "entrance": "rest", "bucket": 0},
    }


def _value(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return "probe"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("enum", "examples"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    kind = schema.get("type", "string")
    return _TYPED.get(kind[0] if isinstance(kind, list) and kind else kind, "probe")


def problems(tools: Iterable[ToolSpec], decide: Callable[[Mapping[str, Any]], PolicyDecision],
             query: str, where: str) -> list[LoadError]:
    """What `decide` (the compiled policy) answers that is not a decision: one error per
    distinct problem, naming the tools it hits (`where`: the policies, for a problem every
    tool has)."""
    return _report([(spec, _problem(decide(probe_input(spec)))) for spec in tools],
                   query, where)


async def answers(tools: Iterable[ToolSpec],
                  evaluate: Callable[[Mapping[str, Any]], Awaitable[PolicyDecision]],
                  query: str, where: str) -> list[LoadError]:
    """`problems` for an engine that answers over the network (OPA): every tool is asked
    at once, and an engine that does not answer is a problem too."""
    async def ask(spec: ToolSpec) -> str | None:
        try:
            return _problem(await evaluate(probe_input(spec)))
        except PolicyUnavailable as exc:
            return exc.message
    specs = list(tools)
    found = await asyncio.gather(*(ask(spec) for spec in specs))
    return _report(list(zip(specs, found, strict=True)), query, where)


def _problem(decision: PolicyDecision) -> str | None:
    if decision.reasons[:1] != (str(ReasonCode.POLICY_ERROR),):
        return None
    return decision.reasons[1] if len(decision.reasons) > 1 else "policy_error"


def _report(results: list[tuple[ToolSpec, str | None]], query: str,
            where: str) -> list[LoadError]:
    hit: dict[str, list[ToolSpec]] = {}
    for spec, detail in results:
        if detail is not None:
            hit.setdefault(detail, []).append(spec)
    found = []
    for detail, specs in hit.items():
        at = _AT.search(detail)
        if at is not None:   # the engine named the line that failed: report it there
            names = ", ".join(sorted(s.name for s in specs))
            found.append(LoadError(at["file"], int(at["line"]),
                                   f"{query} gives no decision on a probe call of {names}: "
                                   f"{detail[:at.start()]}"))
        elif len(specs) == 1:
            file, _, line = specs[0].source.rpartition(":")
            found.append(LoadError(file, int(line) if line.isdigit() else None,
                                   f"tool {specs[0].name!r}: {query} gives no decision on a "
                                   f"probe call: {detail}"))
        else:
            names = ", ".join(sorted(s.name for s in specs))
            found.append(LoadError(where, None, f"{query} gives no decision on a probe call "
                                   f"of {len(specs)} tools ({names}): {detail}"))
    return found
