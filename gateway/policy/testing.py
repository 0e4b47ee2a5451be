"""`toolgate policy test`: run every `test_*` rule under the policy paths, like `opa test`.

A test passes when its rule evaluates to `true`; it fails when it is undefined or any other
value, and errors when evaluation raises. Rules are found in the parsed modules (the
engine's AST), so a test is found however it is written (`test_x if {...}`, `test_x := ...`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.policy.embedded import compile_engine, error_location, evaluate_json
from gateway.policy.sources import PolicySources


class Outcome(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


@dataclass(frozen=True)
class TestResult:
    file: str
    rule: str          # data.<package>.<name>
    line: int
    outcome: Outcome
    duration_ms: float
    message: str = ""


def _package(ast: dict[str, Any]) -> str:
    parts = []
    node = ast["package"]["refr"]
    while True:
        if "Var" in node:
            parts.append(node["Var"]["value"])
            break
        if "RefDot" in node:
            parts.append(node["RefDot"]["field"][1])
            node = node["RefDot"]["refr"]
        else:
            break
    return ".".join(reversed(parts))


def _head_name(head: dict[str, Any]) -> tuple[str, int] | None:
    """The rule's name and line from a rule head of any kind."""
    for kind in head.values():
        refr = kind.get("refr") if isinstance(kind, dict) else None
        if refr and "Var" in refr:
            return refr["Var"]["value"], refr["Var"]["span"]["line"]
        name = kind.get("name") if isinstance(kind, dict) else None
        if isinstance(name, list) and len(name) == 2 and isinstance(name[1], str):
            return name[1], name[0]["line"]
    return None


def discover(engine: Any) -> Iterator[tuple[str, str, int]]:
    """(file, data.<pkg>.<rule>, line) for every distinct `test_*` rule."""
    seen = set()
    for module in json.loads(engine.get_ast_as_json()):
        file = module["source"]["file"]
        package = _package(module["ast"])
        for rule in module["ast"].get("rules", []):
            spec = rule.get("Spec")
            if not spec:
                continue
            found = _head_name(spec["head"])
            if found is None or not found[0].startswith("test_"):
                continue
            path = f"data.{package}.{found[0]}"
            if path not in seen:
                seen.add(path)
                yield file, path, found[1]


def run_tests(sources: PolicySources, name_filter: str | None = None) -> list[TestResult]:
    engine = compile_engine(sources)
    results = []
    for file, rule, line in sorted(discover(engine)):
        if name_filter and name_filter not in rule:
            continue
        engine.set_input_json("{}")
        start = time.perf_counter()
        try:
            value = evaluate_json(engine, rule, "{}")
        except RuntimeError as exc:
            outcome, message = Outcome.ERROR, error_location(str(exc))[2]
        else:
            outcome = Outcome.PASS if value is True else Outcome.FAIL
            message = "" if value is True else f"got {json.dumps(value)}"
        duration = (time.perf_counter() - start) * 1000
        results.append(TestResult(file, rule, line, outcome, duration, message))
    return results


def report(results: list[TestResult], verbose: bool) -> Iterator[str]:
    """Lines in the shape of `opa test`'s output."""
    by_file: dict[str, list[TestResult]] = {}
    for r in results:
        by_file.setdefault(r.file, []).append(r)
    for file, items in by_file.items():
        shown = [r for r in items if verbose or r.outcome is not Outcome.PASS]
        if not shown:
            continue
        yield f"{file}:"
        for r in shown:
            detail = f" ({r.message})" if r.message else ""
            yield f"{r.rule}: {r.outcome} ({r.duration_ms:.3f}ms){detail}  [line {r.line}]"
        yield ""
    yield "-" * 80
    for outcome in Outcome:
        count = sum(1 for r in results if r.outcome is outcome)
        if count:
            yield f"{outcome}: {count}/{len(results)}"
    if not results:
        yield "no tests found"
