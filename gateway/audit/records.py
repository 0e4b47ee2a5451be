"""Every audit record the gateway writes, built here and nowhere else (DESIGN §7).

Kinds: `decision` (one per call, before any action), `outcome` (one per call that reached an
upstream or whose action failed after its decision), `approval` (every event of a held
call, refusals included), `killswitch` (set, cleared, refused), `policy_reload` (every
reload of the bundle, refused ones included). A record holds no token, no
credential and no body; arguments are redacted (`x-pii` fields and the policy's `redact`
pointers, by the runtime's `Redactor`: a mask or a keyed hash), and arguments that never
passed the schema are kept only in outline (declared names, types and sizes) — and
messages quote a caller's text only cut short (`gateway.core.errors.quote`) — so a refused
call's record is bounded whatever its body. A decision record also carries what the policy
saw (`input`, redacted alike), the tool's own `spec_revision`, `args_valid` and `spend`, so
a later bundle can judge the call again.
`gateway.audit.log.AuditLog` writes them; `gateway.audit.call.CallAudit` makes sure each
call gets its decision and outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway.audit.redact import WHOLE, Redactor, outline
from gateway.bundle.specs import Mode
from gateway.core.canonical import rfc3339
from gateway.core.decision import Action, Verdict
from gateway.core.errors import GatewayError, ReasonCode
from gateway.core.stage import Stage

if TYPE_CHECKING:
    from gateway.approvals.model import Approval
    from gateway.auth import Principal
    from gateway.bundle import Bundle
    from gateway.bundle.routes import PathTemplate
    from gateway.bundle.specs import ToolSpec
    from gateway.core.context import CallContext
    from gateway.state.killswitch import KillSwitch


MAX_ID = 128  # characters of a caller-chosen id kept in a record


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def actor(principal: Principal) -> dict[str, Any]:
    """Who acted on the admin API: the identity and the roles the decision relied on."""
    return {**principal.as_audit(), "roles": list(principal.roles)}


def decision(verdict: Verdict, *, revision: str, elapsed_s: float, redactor: Redactor,
             spec: ToolSpec | None = None, ctx: CallContext | None = None,
             approval_id: str | None = None) -> dict[str, Any]:
    """The decision record: what was decided, by which stage, on what facts — and, once
    the policy was asked, the very document it was shown (`input`), so a later bundle can
    judge the same call again (replay).

    `spec` is the tool when the entrance found one; `ctx` is there once the pipeline ran.
    Every copy of the arguments (`args`, `input.args`, a path parameter in
    `input.request.path`) is redacted alike by `redactor`: the spec's `x-pii` fields and the
    decision's `redact` pointers; `redacted` lists the values replaced.
    """
    principal = ctx.known_principal if ctx is not None else None
    pointers: list[str] = list(spec.pii_pointers) if spec is not None else []
    if ctx is not None and ctx.decision is not None:
        pointers += ctx.decision.redact
    if approval_id is None and ctx is not None and ctx.answered is not None \
            and ctx.answered.approval is not None:
        approval_id = ctx.answered.approval.id   # a retry answered from its held call
    status = verdict.error.status if verdict.error is not None else (
        202 if verdict.action is Action.REQUIRE_APPROVAL else None)
    return {
        "principal": principal.as_audit() if principal is not None else None,
        "run_id": ctx.run_id if ctx is not None else None,
        "run": ctx.usage.as_input() if ctx is not None and ctx.usage is not None else None,
        "tool": spec.name if spec is not None else None,
        "spec_revision": spec.revision if spec is not None else None,
        "action": str(verdict.action),
        "shadow": spec is not None and spec.mode is Mode.SHADOW,
        "stage": str(verdict.stage),
        "code": verdict.code,
        "message": verdict.error.message if verdict.error is not None else None,
        "status": status,
        "reasons": list(verdict.reasons),
        # The revision that decided (OPA names its own per answer), else the bundle's.
        "policy_revision": (ctx.decision.revision if ctx is not None and ctx.decision
                            is not None and ctx.decision.revision else revision),
        "args_valid": _args_valid(verdict, ctx),
        **_arguments(ctx, pointers, redactor),
        "spend": dict(ctx.spend) if ctx is not None and ctx.spend is not None else None,
        "idempotency_key": ctx.idempotency_key if ctx is not None else None,
        "approval_id": approval_id,
        "latency_ms": {"total": _ms(elapsed_s),
                       "policy": round(ctx.policy_ms, 3) if ctx is not None else 0.0},
    }


def _args_valid(verdict: Verdict, ctx: CallContext | None) -> bool | None:
    """Whether the arguments matched the schema: null when they were never checked (the
    call stopped before `validate`, or a retry was answered from the call it repeats)."""
    if ctx is not None and ctx.args_valid:
        return True
    return False if verdict.code == ReasonCode.SCHEMA_INVALID else None


def _arguments(ctx: CallContext | None, pointers: list[str],
               redactor: Redactor) -> dict[str, Any]:
    """`args` (redacted) once they passed the schema, here or in the call a retry repeats
    (a key answers only the same arguments); else only `args_outline`. `input`: the policy's
    input document with the same redaction, or null if the policy was never asked."""
    if ctx is None:
        return {"args": None, "input": None, "redacted": []}
    if not (ctx.args_valid or ctx.answered is not None):
        return {"args": None, "args_outline": outline(ctx.call.args, ctx.call.spec.arguments),
                "input": None, "redacted": []}
    if ctx.answered is not None:
        # A retry: the policy was not asked again, so what it redacted is the call's it
        # repeats — kept with a held call; not kept for a completed one, whose arguments
        # are then redacted whole (the first call's record has them, as the policy wanted).
        held = ctx.answered.approval
        pointers = list(held.redact) if held is not None else [WHOLE]
    args, replaced = redactor.apply(dict(ctx.call.args), pointers)
    return {"args": args, "input": _input(ctx, args, replaced), "redacted": replaced}


def _input(ctx: CallContext, args: Any, replaced: list[str]) -> dict[str, Any] | None:
    """The policy's input document as it was shown, with the call's arguments as redacted
    once for the record (the policy was shown the same ones) — in the request path too,
    since the route's path parameters are arguments."""
    shown = ctx.policy_input
    if shown is None:
        return None
    request = {**shown["request"],
               "path": redacted_path(ctx.call.spec.route, shown["request"]["path"], args,
                                     replaced)}
    return {**shown, "args": args, "request": request}


def redacted_path(route: PathTemplate, path: str, args: Any, replaced: list[str]) -> str:
    """`path` (raw, as the agent sent it) with the segment of each path parameter whose
    value was redacted (`replaced`, as `Redactor.apply` names them) set to its token."""
    whole = WHOLE in replaced
    names = {p[1:] for p in replaced if p.count("/") == 1}  # a parameter name has no / or ~
    if not (whole or names):
        return path
    parts = path[1:].split("/") if path.startswith("/") else []
    if len(parts) != len(route.params):
        return route.text   # cannot place the values (never for a matched route): none kept
    out = []
    for part, name in zip(parts, route.params, strict=True):
        if name is not None and (whole or name in names):
            token = args if whole else args[name]
            out.append(quote(str(token), safe=":"))
        else:
            out.append(part)
    return "/" + "/".join(out)


def internal_decision(reason: str) -> dict[str, Any]:
    """The decision record of a call that failed before it was decided."""
    return {"action": str(Action.DENY), "stage": str(Stage.INTERNAL), "reasons": [reason],
            "code": reason}


def outcome(*, status: int | None = None, upstream_status: int | None = None,
            error: str | None = None, output_valid: bool | None = None,
            total_s: float | None = None, policy_ms: float | None = None,
            upstream_ms: float | None = None, sent: bool | None = None) -> dict[str, Any]:
    """The outcome record of a call whose action started: what the upstream answered (or
    how the action failed), and how long it all took. `sent: false` says the request never
    left the gateway (the upstream could not be connected to)."""
    record: dict[str, Any] = {"status": status, "upstream_status": upstream_status,
                              "error": error}
    if sent is not None:
        record["sent"] = sent
    if output_valid is not None:
        record["output_valid"] = output_valid
    if total_s is not None:
        record["latency_ms"] = {
            "total": _ms(total_s), "policy": policy_ms,
            "upstream": None if upstream_ms is None else round(upstream_ms, 3)}
    return record


def approval(event: str, held: Approval, **fields: Any) -> dict[str, Any]:
    """An `approval` record: one event in the life of a held call, linked to its call."""
    return {"decision_id": held.decision_id, "approval_id": held.id, "event": event,
            "status": str(held.status), "tool": held.tool,
            "principal": dict(held.principal), "policy_revision": held.revision or None,
            **fields}


def approval_outcome(held: Approval, *, status: str, error: str | None,
                     upstream_status: int | None, reason: str | None,
                     latency_ms: float | None, sent: bool,
                     stored: bool = True) -> dict[str, Any]:
    """The `outcome` record of a held call the executor sent (or could not send: `sent`
    is false only when the request is known never to have left the gateway)."""
    record = {"decision_id": held.decision_id, "approval_id": held.id, "tool": held.tool,
              "principal": dict(held.principal), "policy_revision": held.revision or None,
              "status": status, "error": error, "sent": sent,
              "upstream_status": upstream_status, "reason": reason,
              "attempt": held.attempts, "latency_ms": {"upstream": latency_ms}}
    if not stored:
        record["stored"] = False
    return record


def refusal(approval_id: str, who: Principal | None, exc: GatewayError,
            held: Approval | None) -> dict[str, Any]:
    """An approver's action the rules refused (an `approval` record, event `refused`)."""
    return {"decision_id": held.decision_id if held is not None else None,
            "policy_revision": (held.revision or None) if held is not None else None,
            # The id is the caller's to choose when no such approval exists: kept bounded.
            "approval_id": approval_id[:MAX_ID], "event": "refused", "code": str(exc.code),
            "message": exc.message, "actor": actor(who) if who is not None else None}


def admin_refusals(*, since: float, until: float, total: int, rate_limited: int,
                   clients: int, counts: list[dict[str, Any]],
                   sample: list[dict[str, Any]]) -> dict[str, Any]:
    """Unauthenticated refusals on the admin port in one window, aggregated (bounded in
    size whatever the traffic): how many, by whom, and a few examples."""
    return {"decision_id": None, "since": rfc3339(since), "until": rfc3339(until),
            "total": total, "rate_limited": rate_limited, "clients": clients,
            "counts": counts, "sample": sample}


def killswitch(event: str, switch: KillSwitch, who: Mapping[str, Any], *,
               force: bool = False, warning: str | None = None) -> dict[str, Any]:
    """A kill switch set or cleared, and by whom; `force` when it was set although its
    target was not known, `warning` when it was set for an agent never seen."""
    record: dict[str, Any] = {"decision_id": None, "event": event, "scope": switch.scope,
                              "reason": switch.reason, "actor": dict(who)}
    if force:
        record["force"] = True
    if warning is not None:
        record["warning"] = warning
    return record


def killswitch_refusal(scope: object, who: Principal, exc: GatewayError) -> dict[str, Any]:
    """An approver's kill switch action refused (a `killswitch` record, event `refused`):
    a scope that is malformed, names an unknown tool or tenant, or is not set."""
    return {"decision_id": None, "event": "refused", "code": str(exc.code),
            "message": exc.message,
            # The scope is the caller's text: kept only if it is text, and bounded.
            "scope": scope[:MAX_ID] if isinstance(scope, str) else None,
            "actor": actor(who)}


def policy_reload(event: str, *, trigger: str, previous: Bundle,
                  new: Bundle | None = None, errors: list[str] | None = None,
                  who: Principal | None = None) -> dict[str, Any]:
    """A reload of the bundle (`accepted`, `unchanged` or `refused`), what it replaced with
    what, and who asked (`trigger`: api, sighup or watch)."""
    return {"decision_id": None, "event": event, "trigger": trigger,
            "code": str(ReasonCode.BUNDLE_INVALID) if event == "refused" else None,
            "actor": actor(who) if who is not None else None,
            "previous_revision": previous.revision,
            "policy_revision": new.revision if new is not None else previous.revision,
            "revisions": ({"specs": new.spec_revision, "policies": new.policy_revision}
                          if new is not None else None),
            "errors": errors or []}
