"""The bundle: everything a call is judged by, compiled once, under one revision.

Tool specs (with their compiled schemas and route table) and the policies (modules and
data, compiled into the engine) form one frozen `Bundle`. `load_bundle` is the one function
that builds it — `toolgate serve` and `toolgate check` both call it, so a bundle `check`
accepts is exactly one `serve` would run — and it reports every problem at once. The
running gateway reaches its bundle through one `BundleRef`; a call pins the bundle it
started with, and its records carry that bundle's `revision`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from gateway.bundle.routes import RouteTable
from gateway.bundle.specs import SpecErrors, SpecSet, ToolSpec, load_specs
from gateway.config import Settings
from gateway.core.clock import SYSTEM_CLOCK, Clock
from gateway.core.errors import LoadError, LoadErrors
from gateway.policy import probe
from gateway.policy.embedded import EmbeddedEngine
from gateway.policy.engine import PolicyEngine
from gateway.policy.opa import OpaEngine
from gateway.policy.sources import PolicySources, load_sources


@dataclass(frozen=True)
class Bundle:
    tools: Mapping[str, ToolSpec]
    routes: RouteTable[ToolSpec]
    policies: PolicySources | None      # None: the policies are an OPA server's
    engine: PolicyEngine
    spec_revision: str
    _probed: list[tuple[float, list[LoadError]]] = field(
        default_factory=list, compare=False, repr=False)   # the last probe, and when

    @property
    def policy_revision(self) -> str:
        return self.engine.revision

    @property
    def revision(self) -> str:
        """One revision over the specs and the policies (and their data); with OPA, the
        revision of OPA's bundle (the specs' is `spec_revision`), which OPA may change."""
        if self.policies is None:
            return self.engine.revision
        return self._revision

    @cached_property
    def _revision(self) -> str:
        # Read several times by every call: the embedded engine's revision never changes.
        return hashlib.sha256(f"{self.spec_revision}\0{self.policy_revision}".encode()
                              ).hexdigest()[:16]

    def same_as(self, other: Bundle) -> bool:
        return (self.spec_revision, self.revision) == (other.spec_revision, other.revision)

    async def probe(self, query: str, where: str, *, max_age_s: float = 0.0) -> list[LoadError]:
        """Ask the engine for a decision on a probe call of every tool (an OPA server's
        policies are checked where they run; the embedded ones were checked at load).
        `max_age_s`: an answer that recent will do (`/readyz` is unauthenticated, and each
        probe is one request to OPA per tool)."""
        if self.policies is not None:
            return []
        now = time.monotonic()
        if self._probed and now - self._probed[0][0] < max_age_s:
            return self._probed[0][1]
        found = await probe.answers(self.tools.values(), self.engine.evaluate, query, where)
        self._probed[:] = [(time.monotonic(), found)]
        return found

    async def close(self) -> None:
        await self.engine.close()


def load_bundle(settings: Settings, clock: Clock = SYSTEM_CLOCK, *,
                opa: OpaEngine | None = None) -> Bundle:
    """Load and compile specs and policies; `LoadErrors` lists every problem in both.

    The embedded engine is bound to the calling thread: call this on the thread that will
    evaluate (the event loop's, when serving). With `policy.engine: opa` the policies are
    the OPA server's: `opa` is the running engine to keep (a reload), else a new one.
    """
    errors: list[LoadError] = []
    specs: SpecSet | None = None
    sources: PolicySources | None = None
    tools: Iterable[ToolSpec] = ()     # what the probe asks about: the specs that loaded
    try:
        specs = load_specs(settings.tool_specs, settings.upstreams.keys())
        tools = specs.tools.values()
    except SpecErrors as exc:
        errors += exc.errors
        tools = exc.loaded.values()
    except LoadErrors as exc:
        errors += exc.errors
    if settings.policy.engine == "opa":
        if specs is not None:
            errors += _credential_clashes(specs, settings)
        if errors or specs is None:
            raise LoadErrors(errors)
        return Bundle(tools=specs.tools, routes=specs.routes, policies=None,
                      engine=opa or OpaEngine(settings.policy.opa_url, settings.policy.query,
                                              settings.policy.timeout_ms),
                      spec_revision=specs.revision)
    try:
        sources = load_sources(settings.policies)
    except LoadErrors as exc:
        errors += exc.errors
    engine: PolicyEngine | None = None
    if sources is not None:
        try:
            engine = EmbeddedEngine(sources, settings.policy.query, settings.policy.timeout_ms,
                                    clock)
        except LoadErrors as exc:
            errors += exc.errors
    if specs is not None:
        errors += _credential_clashes(specs, settings)
    if isinstance(engine, EmbeddedEngine):
        # A policy that compiles but can never decide would deny every call quietly.
        errors += probe.problems(tools, engine.decide_now,
                                 settings.policy.query,
                                 ", ".join(str(p) for p in settings.policies))
    if errors or specs is None or sources is None or engine is None:
        # Dropped here, on the thread that built it: the traceback keeps this frame, and a
        # regorus engine that a garbage collection on another thread frees is leaked.
        engine = None
        raise LoadErrors(errors)
    return Bundle(tools=specs.tools, routes=specs.routes, policies=sources, engine=engine,
                  spec_revision=specs.revision)


def _credential_clashes(specs: SpecSet, settings: Settings) -> list[LoadError]:
    """SECURITY: a spec may not let the agent send its upstream's credential header."""
    errors = []
    for spec in specs.tools.values():
        cred = settings.upstreams[spec.upstream].credential
        if cred is None:
            continue
        if cred.header.lower() in {h.lower() for h in spec.forward_headers}:
            file, _, line = spec.source.rpartition(":")
            errors.append(LoadError(file, int(line) if line.isdigit() else None,
                                    f"tool {spec.name!r}: forward.headers lists "
                                    f"{cred.header!r}, the credential header of upstream "
                                    f"{spec.upstream!r}"))
    return errors


class BundleRef:
    """The one reference the running gateway reaches its bundle through."""

    def __init__(self, bundle: Bundle) -> None:
        self._bundle = bundle

    @property
    def current(self) -> Bundle:
        return self._bundle

    def swap(self, bundle: Bundle) -> Bundle:
        """Serve `bundle` from now on; the old one, which calls in flight still hold (they
        pinned it) and finish on. It is not closed: it goes when the last of them does."""
        old, self._bundle = self._bundle, bundle
        return old

    async def close(self) -> None:
        await self._bundle.close()
