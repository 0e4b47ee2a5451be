"""The embedded engine: Rego evaluated in-process by regorus.

A regorus `Engine` may only be used on the thread that created it, so each
`EmbeddedEngine` owns one worker thread that compiles the policy and runs every evaluation.
That also keeps evaluation off the event loop and lets the gateway stop waiting after
`timeout_ms` (the call then fails closed with 503 `policy_unavailable`).

regorus lacks the `crypto.*` and `io.jwt.*` builtins; policies that call them fail to load
here with the line of the call, instead of failing at request time.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import regorus

from gateway.decision import PolicyDecision
from gateway.errors import LoadError, LoadErrors, PolicyUnavailable
from gateway.policy.engine import PolicySources

_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)")
UNDEFINED = "<undefined>"


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
    errors = []
    for name, text in sources.modules:
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
    """`PolicyEngine` on regorus; create with `await EmbeddedEngine.start(...)`."""

    def __init__(self, sources: PolicySources, query: str, timeout_ms: int) -> None:
        self._sources = sources
        self._query = query
        self._timeout = timeout_ms / 1000
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rego")
        self._engine: Any = None

    @classmethod
    async def start(cls, sources: PolicySources, query: str,
                    timeout_ms: int) -> EmbeddedEngine:
        self = cls(sources, query, timeout_ms)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._compile)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        return self

    def _compile(self) -> None:
        self._engine = compile_engine(self._sources)

    @property
    def revision(self) -> str:
        return self._sources.revision

    def _evaluate(self, input_json: str) -> tuple[PolicyDecision, float]:
        start = time.perf_counter()
        try:
            value = evaluate_json(self._engine, self._query, input_json)
        except RuntimeError as exc:
            message = error_location(str(exc))[2]
            return (PolicyDecision.error(f"policy evaluation error: {message}"),
                    time.perf_counter() - start)
        elapsed = time.perf_counter() - start
        if value == UNDEFINED:
            return PolicyDecision.error(f"{self._query} is undefined"), elapsed
        return PolicyDecision.parse(value), elapsed

    async def evaluate(self, input_doc: Mapping[str, Any]) -> PolicyDecision:
        input_json = orjson.dumps(input_doc).decode()
        loop = asyncio.get_running_loop()
        try:
            decision, elapsed = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._evaluate, input_json), self._timeout)
        except TimeoutError:
            elapsed = self._timeout
        # regorus holds the GIL while it evaluates, so the wait above cannot always fire in
        # time; the evaluation's own duration decides, and an answer that came too late is
        # not used (fail closed, like an OPA sidecar that missed its deadline).
        if elapsed >= self._timeout:
            raise PolicyUnavailable(f"policy evaluation took longer than "
                                    f"{self._timeout * 1000:.0f} ms")
        return decision

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
