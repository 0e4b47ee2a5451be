"""The embedded engine: Rego evaluated in-process by regorus.

regorus holds the GIL while it evaluates, so a worker thread would buy no parallelism and
would cost a GIL hand-off per call (measured by `bench/bench_gateway.py`: ~2.5x the
decision's own time, and far worse under load). The engine is therefore built and used
on the event-loop thread — the one thread a regorus `Engine` may be used on. A decision
takes tens of microseconds; `timeout_ms` is enforced on the evaluation's measured duration
(an answer that came too late is not used: 503 `policy_unavailable`), and the README asks
policy authors to keep rules bounded, since a runaway rule would hold the loop.

regorus lacks the `crypto.*` and `io.jwt.*` builtins, and `http.send` evaluates to undefined.
regorus itself compiles calls to them, so `compile_engine` looks for them and makes each a
load error with its line (`toolgate check` shows it), instead of a deny at request time.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import orjson
import regorus

from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.decision import Action, PolicyDecision
from gateway.core.errors import LoadError, LoadErrors, PolicyUnavailable
from gateway.policy.sources import PolicySources

_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)")
UNDEFINED = "<undefined>"
_UNSUPPORTED = re.compile(r"(?<![\w.])(crypto\.[a-z0-9_.]+|io\.jwt\.[a-z0-9_.]+|http\.send)\s*\(")


def unsupported_calls(name: str, text: str) -> list[LoadError]:
    """Calls to builtins the embedded engine does not have (comments skipped)."""
    errors = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        for m in _UNSUPPORTED.finditer(code):
            errors.append(LoadError(name, number, f"{m.group(1)} is not available in the "
                                    "embedded engine (regorus)"))
    return errors


def error_location(message: str) -> tuple[str | None, int | None, str]:
    """Split a regorus error into (file, line, last line of the message)."""
    m = _LOCATION.search(message)
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    text = lines[-1].removeprefix("error: ") if lines else "error"
    if m is None:
        return None, None, text
    return m.group("file"), int(m.group("line")), text


def compile_engine(sources: PolicySources) -> Any:
    """Build a regorus engine from sources, on the calling thread. Raises `LoadErrors`."""
    # With backtraces on, regorus appends one to every error and its first error costs tens
    # of milliseconds of symbol loading, on the request path. Policy errors are reported by
    # file and line; a Rust backtrace helps nobody who writes Rego.
    os.environ["RUST_BACKTRACE"] = "0"
    engine = regorus.Engine()
    errors: list[LoadError] = []
    for name, text in sources.modules:
        errors += unsupported_calls(name, text)
        try:
            engine.add_policy(name, text)
        except RuntimeError as exc:
            file, line, message = error_location(str(exc))
            errors.append(LoadError(file or name, line, message))
    if errors:
        raise LoadErrors(errors)
    engine.add_data_json(sources.data_json)
    return engine


def evaluate_json(engine: Any, rule: str, input_json: str) -> Any:
    """One evaluation; returns the JSON value, or raises `RuntimeError` from regorus."""
    engine.set_input_json(input_json)
    return orjson.loads(engine.eval_rule_as_json(rule))


class EmbeddedEngine:
    """`PolicyEngine` on regorus; create it on the thread that will evaluate (the loop's)."""

    def __init__(self, sources: PolicySources, query: str, timeout_ms: int,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._sources = sources
        self._query = query
        self._timeout = timeout_ms / 1000
        self._clock = clock
        self._thread = threading.get_ident()
        self._engine: Any = compile_engine(sources)

    @property
    def revision(self) -> str:
        return self._sources.revision

    async def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        # SECURITY: pyo3 panics if an Engine is touched from another thread; fail loudly
        # here instead, which the pipeline turns into a deny.
        if threading.get_ident() != self._thread:
            raise RuntimeError("the embedded engine is bound to the thread that built it")
        start = self._clock.monotonic()
        decision = self.decide_now(input_doc)
        # Only a late allow is distrusted: a late deny or hold is still safe to act on, and
        # must not turn into an allow under fail_open.
        if (self._clock.monotonic() - start >= self._timeout
                and decision.action is Action.ALLOW):
            raise PolicyUnavailable(f"policy evaluation took longer than "
                                    f"{self._timeout * 1000:.0f} ms")
        return decision

    def decide_now(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        """One evaluation, on this thread, with no time limit (`evaluate` adds it)."""
        try:
            value = evaluate_json(self._engine, self._query, orjson.dumps(input_doc).decode())
        except RuntimeError as exc:
            file, line, message = error_location(str(exc))
            where = f" at {file}:{line}" if file is not None else ""
            return PolicyDecision.error(f"policy evaluation error: {message}{where}")
        return (PolicyDecision.error(f"{self._query} is undefined")
                if value == UNDEFINED else PolicyDecision.parse(value))

    async def close(self) -> None:
        self._engine = None
