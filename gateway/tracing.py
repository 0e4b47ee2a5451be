"""OpenTelemetry export of calls: one span per call, a child per stage and for the upstream.

Off unless `tracing.otlp_endpoint` is set, and then it costs nothing: `Tracing.start` gives
the call its trace id (its valid `traceparent`'s, else a new one: `gateway.core.call`) and
no spans, and nothing of OpenTelemetry is imported — the packages are the optional extra
`otel`, and `gateway` imports and runs without them. A config that sets an endpoint without
the extra installed is refused at start (`unavailable`).

On, every call the REST entrance answers, refusals included, has a root span (kind SERVER)
named `toolgate.call <tool>`, a child per pipeline stage that ran (`gateway.pipeline.run`)
and a child (kind CLIENT) for the upstream request (`gateway.act.forward`). A valid
`traceparent` from the agent makes the root span its child, so the agent's trace goes on;
otherwise the call starts a trace. Either way the audit record's `trace_id` is the span's.
Spans go through a `BatchSpanProcessor` (export happens on its own thread, never in the
event loop) to the OTLP/HTTP protobuf exporter, and are flushed when the gateway closes.

The upstream gets the agent's `traceparent` and `tracestate` as the outbound plan has them
(DESIGN §3's allow-list), not one naming the gateway's span: the plan is fixed before the
policy runs, shown to approvers and sent byte for byte, and an upstream span's id exists
only at send time.

What a span carries: identifiers and outcomes only — decision id, tool, action, code, the
stage that decided, principal `sub` and `tenant`, HTTP method and status, route templates.
SECURITY: never an argument value (the path as sent and the query string hold arguments),
a header, a token, a policy's reasons or an error message (both can quote arguments);
exceptions are not recorded on spans.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.core.call import TraceParent, new_trace_id
from gateway.core.errors import GatewayError, LoadError, ReasonCode

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

    from gateway.auth import Principal
    from gateway.bundle.specs import ToolSpec
    from gateway.config import TracingSettings
    from gateway.core.decision import Verdict
    from gateway.core.stage import Stage

EXTRA = "otel"
# What the extra installs; looked for, not imported, until tracing is on.
REQUIRED_MODULES = ("opentelemetry.sdk.trace",
                    "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def unavailable(settings: TracingSettings) -> LoadError | None:
    """Why tracing as configured cannot start (the extra is not installed), or None. The
    same one line for `toolgate check` and `toolgate serve`."""
    if settings.otlp_endpoint is None:
        return None
    for module in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return LoadError("tracing.otlp_endpoint", None, (
                f"the OpenTelemetry packages are not installed (no module {module}); "
                f"install them with pip install 'toolgate[{EXTRA}]', or remove the setting"))
    return None


@dataclass(frozen=True)
class _Otel:
    """Tracing on: the provider and the few OpenTelemetry names the spans use."""

    provider: TracerProvider
    tracer: Tracer
    error: StatusCode
    server: SpanKind
    client: SpanKind
    root_context: Callable[[TraceParent | None], Context]
    child_context: Callable[[Span], Context]


def _open_otel(settings: TracingSettings) -> _Otel:
    # Imported here, and only here: with tracing off none of this is ever loaded.
    from opentelemetry.context import Context  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON  # noqa: PLC0415
    from opentelemetry.trace import (  # noqa: PLC0415
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        StatusCode,
        TraceFlags,
        set_span_in_context,
    )

    # SECURITY: every call is sampled, whatever the agent's `traceparent` flags say: the
    # caller does not get to switch off the operator's view of the gateway.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}),
                              sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=settings.timeout_s)))

    def root_context(parent: TraceParent | None) -> Context:
        if parent is None:
            return Context()  # a new trace, whatever context the task may carry
        return set_span_in_context(NonRecordingSpan(SpanContext(
            trace_id=int(parent.trace_id, 16), span_id=int(parent.parent_id, 16),
            is_remote=True, trace_flags=TraceFlags(parent.flags))))

    return _Otel(provider=provider, tracer=provider.get_tracer("toolgate"),
                 error=StatusCode.ERROR, server=SpanKind.SERVER, client=SpanKind.CLIENT,
                 root_context=root_context, child_context=set_span_in_context)


def _code_of(exc: BaseException) -> str:
    if isinstance(exc, GatewayError):
        return str(exc.code)
    # Cancellation (a BaseException) means the call was abandoned.
    return str(ReasonCode.INTERNAL_ERROR) if isinstance(exc, Exception) else "cancelled"


class Tracing:
    """The process's tracing: off (`Tracing()`) or exporting (`Tracing.open` with an
    endpoint). Close it when the gateway closes: that flushes what is still queued."""

    def __init__(self, otel: _Otel | None = None) -> None:
        self._otel = otel

    @classmethod
    def open(cls, settings: TracingSettings) -> Tracing:
        return cls(None if settings.otlp_endpoint is None else _open_otel(settings))

    @property
    def on(self) -> bool:
        return self._otel is not None

    def start(self, traceparent: str | Sequence[str] | None, *, decision_id: str,
              method: str, entrance: str) -> tuple[str, CallTrace | None]:
        """A call arrives: its trace id and, when tracing is on, its root span (started)."""
        parent = TraceParent.parse(traceparent)
        otel = self._otel
        if otel is None:
            return (new_trace_id() if parent is None else parent.trace_id), None
        root = otel.tracer.start_span(
            "toolgate.call", context=otel.root_context(parent), kind=otel.server,
            attributes={"toolgate.decision_id": decision_id, "http.request.method": method,
                        "toolgate.entrance": str(entrance)},
            record_exception=False, set_status_on_exception=False)
        if not root.get_span_context().is_valid:  # the SDK is switched off (OTEL_SDK_DISABLED)
            return (new_trace_id() if parent is None else parent.trace_id), None
        call = CallTrace(otel, root)
        return call.trace_id, call

    async def close(self) -> None:
        if self._otel is not None:
            # Flushing sends the last batch: blocking I/O, so not on the event loop.
            await asyncio.to_thread(self._otel.provider.shutdown)


class CallTrace:
    """One traced call: its root span, ended on leaving the `with` block (on every path),
    and its children. The entrance, the pipeline and the forward act report to it."""

    __slots__ = ("_context", "_otel", "_root", "code")

    def __init__(self, otel: _Otel, root: Span) -> None:
        self._otel, self._root = otel, root
        self._context = otel.child_context(root)
        self.code: str | None = None

    @property
    def trace_id(self) -> str:
        return format(self._root.get_span_context().trace_id, "032x")

    def tool(self, spec: ToolSpec) -> None:
        """The entrance found the tool."""
        self._root.update_name(f"toolgate.call {spec.name}")
        self._root.set_attributes({"toolgate.tool": spec.name, "http.route": spec.route.text})

    def refused(self, stage: Stage, code: str) -> None:
        """The entrance refused the request before it was a tool call."""
        self.code = code
        self._root.set_attributes({"toolgate.action": "deny", "toolgate.stage": str(stage),
                                   "toolgate.code": code})

    def decided(self, verdict: Verdict, principal: Principal | None) -> None:
        """The pipeline's verdict, and who the call was made by, if that was learned."""
        attributes: dict[str, Any] = {"toolgate.action": str(verdict.action),
                                      "toolgate.stage": str(verdict.stage)}
        if verdict.code is not None:
            self.code = attributes["toolgate.code"] = verdict.code
        if principal is not None:
            attributes["toolgate.principal.sub"] = principal.sub
            if principal.tenant is not None:
                attributes["toolgate.principal.tenant"] = principal.tenant
        self._root.set_attributes(attributes)

    def answered(self, status: int, action: str) -> None:
        """What the agent got. A deny or a 5xx is an error (a 4xx the upstream gave is not:
        the gateway did its job)."""
        self._root.set_attributes({"http.response.status_code": status,
                                   "toolgate.action": action})
        if self.code is not None:
            self._root.set_attribute("toolgate.code", self.code)
        if action == "deny" or status >= 500:
            self.error(self._root, self.code or str(status))

    def stage(self, stage: Stage) -> ChildSpan:
        return ChildSpan(self, self._otel.tracer.start_span(
            f"toolgate.{stage}", context=self._context,
            attributes={"toolgate.stage": str(stage)},
            record_exception=False, set_status_on_exception=False))

    def upstream(self, spec: ToolSpec) -> ChildSpan:
        return ChildSpan(self, self._otel.tracer.start_span(
            f"toolgate.upstream {spec.upstream}", context=self._context,
            kind=self._otel.client,
            attributes={"toolgate.upstream": spec.upstream, "http.request.method": spec.method,
                        "url.template": spec.forward.text},
            record_exception=False, set_status_on_exception=False), upstream=True)

    def error(self, span: Span, description: str) -> None:
        span.set_status(self._otel.error, description)

    def fail(self, span: Span, exc: BaseException, *, upstream: bool = False) -> None:
        code = _code_of(exc)
        if upstream:  # the call's own answer is this failure (502, 504)
            self.code = code
        span.set_attribute("toolgate.code", code)
        self.error(span, code)

    def __enter__(self) -> CallTrace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.fail(self._root, exc)
        self._root.end()


class ChildSpan:
    """A stage's or the upstream request's span: ended on leaving the `with` block; an
    exception leaving it marks it failed with its code."""

    __slots__ = ("_call", "_span", "_upstream")

    def __init__(self, call: CallTrace, span: Span, *, upstream: bool = False) -> None:
        self._call, self._span, self._upstream = call, span, upstream

    def status(self, status: int) -> None:
        """The upstream's answer; a 4xx or 5xx is an error of this request (OTel's HTTP
        client convention)."""
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:
            self._call.error(self._span, str(status))

    def __enter__(self) -> ChildSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self._call.fail(self._span, exc, upstream=self._upstream)
        self._span.end()
