"""Rows ⇄ domain objects, and the statements both stores run, written once.

Statements use `?` placeholders; the PostgreSQL store numbers them (`$1`, `$2`, …). Every
column list is a constant, and values are always bound, never formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.approvals import model
from gateway.approvals.model import Approval, ApprovalStatus, Vote
from gateway.audit.redact import WHOLE
from gateway.core.outbound import OutboundPlan
from gateway.state.idempotency import KeyState, KeyStatus, Scope
from gateway.state.killswitch import KillSwitch

PLAN_FORMAT = 2  # the `call` column of a held call stores an `OutboundPlan` (format 2)

APPROVAL_COLUMNS = (
    "id", "status", "decision_id", "tool", "args", "call_hash", "principal", "reasons",
    "approvals_required", "approver_roles", "created_at", "expires_at", "updated_at", "call",
    "body", "call_digest", "idempotency_key", "resend_safe", "reason", "result_status",
    "result_content_type", "result_body", "attempts", "owner", "error")
# What a transition may change besides the status.
UPDATABLE = frozenset({"reason", "result_status", "result_content_type", "result_body",
                       "attempts", "owner", "error"})
KEY_COLUMNS = ("tenant", "tool", "key", "fingerprint", "request_id", "state", "lease_until",
               "status", "content_type", "body", "created_at", "approval_id")

_A = ", ".join(APPROVAL_COLUMNS)
_AQ = ", ".join(f"a.{c}" for c in APPROVAL_COLUMNS)
_K = ", ".join(KEY_COLUMNS)
_KQ = ", ".join(f"k.{c}" for c in KEY_COLUMNS)
_SCOPE = "tenant = ? AND tool = ? AND key = ?"
FINAL = tuple(sorted(str(s) for s in model.FINAL))

INSERT_APPROVAL = (f"INSERT INTO approvals ({_A}, sub, tenant, run_id) VALUES "
                   f"({', '.join('?' * (len(APPROVAL_COLUMNS) + 3))})")
SELECT_APPROVALS = f"SELECT {_A} FROM approvals"
INSERT_VOTE = ("INSERT INTO approval_votes (approval_id, approver_sub, approver, comment, "
               "created_at) VALUES (?, ?, ?, ?, ?)")
COUNT_VOTES = "SELECT COUNT(*) FROM approval_votes WHERE approval_id = ?"
MARK_APPROVED = ("UPDATE approvals SET status = 'approved', updated_at = ? "
                 "WHERE id = ? AND status = 'pending'")
EXPIRE_DUE = ("UPDATE approvals SET status = 'expired', updated_at = ?, "
              "reason = 'not approved before it expired' "
              "WHERE status = 'pending' AND expires_at <= ? RETURNING id")
HEARTBEAT = ("INSERT INTO replicas (id, seen_at) VALUES (?, ?) "
             "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at")
ABANDONED = (f"{SELECT_APPROVALS} WHERE status = 'executing' AND NOT EXISTS (SELECT 1 FROM "
             "replicas r WHERE r.id = approvals.owner AND r.seen_at >= ?) ORDER BY created_at")

# The key's state, and its held call when there is one: one lookup.
SELECT_KEY = (f"SELECT {_KQ}, {_AQ} FROM idempotency k LEFT JOIN approvals a "
              f"ON a.id = k.approval_id WHERE k.tenant = ? AND k.tool = ? AND k.key = ?")
INSERT_KEY = (f"INSERT INTO idempotency ({_K}, updated_at) VALUES "
              "(?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?) ON CONFLICT DO NOTHING")
TAKE_OVER_KEY = ("UPDATE idempotency SET request_id = ?, state = ?, lease_until = ?, "
                 f"approval_id = ?, updated_at = ? WHERE {_SCOPE}")
COMPLETE_KEY = ("UPDATE idempotency SET state = 'done', status = ?, content_type = ?, "
                f"body = ?, updated_at = ? WHERE {_SCOPE} AND request_id = ? "
                "AND state = 'in_flight'")
RELEASE_KEY = (f"DELETE FROM idempotency WHERE {_SCOPE} AND request_id = ? "
               "AND state = 'in_flight'")
PURGE_KEYS = (
    "DELETE FROM idempotency WHERE (state = 'done' AND updated_at < ?) OR (state = 'held' "
    "AND approval_id IN (SELECT id FROM approvals WHERE updated_at < ? AND status IN "
    f"({', '.join(repr(s) for s in FINAL)})))")

SELECT_USAGE = "SELECT usage FROM runs WHERE tenant = ? AND run_id = ?"
# A run is kept while a call of it waits for a person or is being sent.
PURGE_RUNS = ("DELETE FROM runs WHERE updated_at < ? AND NOT EXISTS (SELECT 1 FROM approvals a "
              "WHERE a.run_id = runs.run_id AND COALESCE(a.tenant, '') = runs.tenant "
              "AND a.status IN ('pending', 'approved', 'executing'))")
UPSERT_USAGE = ("INSERT INTO runs (tenant, run_id, usage, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant, run_id) DO UPDATE SET usage = excluded.usage, "
                "updated_at = excluded.updated_at")

PUT_SWITCH = ("INSERT INTO kill_switches (scope, reason, actor, created_at) VALUES "
              "(?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET reason = excluded.reason, "
              "actor = excluded.actor, created_at = excluded.created_at")
CLEAR_SWITCH = ("DELETE FROM kill_switches WHERE scope = ? "
                "RETURNING scope, reason, actor, created_at")
LIST_SWITCHES = "SELECT scope, reason, actor, created_at FROM kill_switches ORDER BY scope"
# What the store has seen of a tenant (a run budget, an idempotency key, a held call) and of
# an agent (the principals of held calls: no other table names agents): a kill switch's check.
TENANT_SEEN = ("SELECT EXISTS (SELECT 1 FROM runs WHERE tenant = ?) "
               "OR EXISTS (SELECT 1 FROM idempotency WHERE tenant = ?) "
               "OR EXISTS (SELECT 1 FROM approvals WHERE tenant = ?)")
HELD_PRINCIPALS = "SELECT DISTINCT principal FROM approvals"


def agent_in(principals: Sequence[Any], agent: str) -> bool:
    """Whether one of these stored principals (held calls') is this agent's."""
    for raw in principals:
        principal = orjson.loads(bytes(raw))
        if isinstance(principal, dict) and principal.get("agent") == agent:
            return True
    return False


def scope_params(scope: Scope) -> tuple[str, str, str]:
    return (scope.tenant, scope.tool, scope.key)


def list_filter(status: str | None, tool: str | None, tenant: str | None,
                limit: int) -> tuple[str, tuple[Any, ...]]:
    """`WHERE … ORDER BY … LIMIT ?` for the approval listing, and its parameters."""
    where, params = [], []
    for column, value in (("status", status), ("tool", tool), ("tenant", tenant)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    return f"{clause} ORDER BY created_at DESC LIMIT ?", (*params, limit)


def transition_sql(from_states: frozenset[ApprovalStatus], fields: Mapping[str, Any],
                   owner_is: tuple[str | None] | None) -> str:
    """The conditional `UPDATE` of a transition; parameters from `transition_params`."""
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)}")
    sets = ", ".join(["status = ?", "updated_at = ?", *(f"{k} = ?" for k in fields)])
    states = ", ".join("?" * len(from_states))
    # `owner IS ?` compares NULL too, in both dialects (PostgreSQL spells it IS NOT
    # DISTINCT FROM; the store rewrites it).
    owner = " AND owner IS ?" if owner_is is not None else ""
    return f"UPDATE approvals SET {sets} WHERE id = ? AND status IN ({states}){owner}"


def transition_params(approval_id: str, from_states: frozenset[ApprovalStatus],
                      to: ApprovalStatus, now: float, fields: Mapping[str, Any],
                      owner_is: tuple[str | None] | None) -> tuple[Any, ...]:
    return (str(to), now, *fields.values(), approval_id,
            *sorted(str(s) for s in from_states), *(owner_is or ()))


def approval_row(a: Approval) -> tuple[Any, ...]:
    call = {**a.plan.to_json(), "format": PLAN_FORMAT, "run_id": a.run_id,
            "spend": dict(a.spend), "revision": a.revision, "redact": list(a.redact)}
    return (a.id, str(a.status), a.decision_id, a.tool, orjson.dumps(a.args), a.call_hash,
            orjson.dumps(a.principal), orjson.dumps(a.reasons), a.approvals_required,
            orjson.dumps(a.approver_roles), a.created_at, a.expires_at,
            a.updated_at or a.created_at, orjson.dumps(call), a.plan.body, a.call_digest,
            a.idempotency_key, int(a.resend_safe), a.reason, a.result_status,
            a.result_content_type, a.result_body, a.attempts, a.owner, a.error,
            a.sub, a.tenant, a.run_id)


def approval_status(stored: str, reason: str | None) -> tuple[ApprovalStatus, str | None]:
    """A stored status, and the reason to show with it. A status this version does not know
    (a newer one's, during a rolling update or after a downgrade) reads as
    `outcome_unknown`, its reason saying so: a final state, so no rule of this version acts
    on the call, and its agent is told nobody here knows whether it ran."""
    try:
        return ApprovalStatus(stored), reason
    except ValueError:
        # SECURITY: never executable. Besides the status being final, every write is
        # conditional on the stored status (`transition_sql`, `MARK_APPROVED`, `EXPIRE_DUE`),
        # which is not one this version ever names, so none can move the row.
        told = (f"stored as {stored!r} by a newer gateway version: this one shows it as "
                "outcome_unknown and never acts on it")
        return ApprovalStatus.OUTCOME_UNKNOWN, f"{told}; {reason}" if reason else told


def approval_from_row(row: Sequence[Any], votes: Sequence[Vote] = ()) -> Approval:
    (id_, status, decision_id, tool, args, chash, principal, reasons, required, roles,
     created, expires, updated, call, body, digest, key, resend_safe, reason, rstatus,
     rtype, rbody, attempts, owner, error) = row
    c = orjson.loads(call)
    known, reason = approval_status(status, reason)
    return Approval(
        id=id_, status=known, decision_id=decision_id, tool=tool,
        args=orjson.loads(args), call_hash=chash, principal=orjson.loads(principal),
        reasons=tuple(orjson.loads(reasons)), approvals_required=required,
        approver_roles=tuple(orjson.loads(roles)), created_at=created, expires_at=expires,
        updated_at=updated, plan=OutboundPlan.from_json(c, bytes(body)), call_digest=digest,
        idempotency_key=key, resend_safe=bool(resend_safe),
        run_id=c.get("run_id"), spend={k: float(v) for k, v in c.get("spend", {}).items()},
        revision=str(c.get("revision", "")),
        # SECURITY: a call held before its redaction was kept is redacted whole elsewhere.
        redact=tuple(c["redact"]) if "redact" in c else (WHOLE,),
        reason=reason, result_status=rstatus, result_content_type=rtype,
        result_body=None if rbody is None else bytes(rbody), attempts=attempts,
        owner=owner, error=error, votes=tuple(votes))


def vote_from_row(approver: bytes, comment: str | None, created: float) -> Vote:
    return Vote(orjson.loads(approver), comment, created)


def key_from_row(row: Sequence[Any], votes: Sequence[Vote] = ()) -> KeyState:
    """A `SELECT_KEY` row: the key's columns, then its held call's (all NULL if none)."""
    (tenant, tool, key, fp, request_id, state, lease, status, ctype, body, created,
     approval_id) = row[:len(KEY_COLUMNS)]
    held = row[len(KEY_COLUMNS):]
    approval = (approval_from_row(held, votes) if approval_id is not None and held
                and held[0] is not None else None)
    return KeyState(Scope(tenant, tool, key), fp, request_id, KeyStatus(state), lease, status,
                    ctype, None if body is None else bytes(body), created, approval)


def switch_from_row(row: Sequence[Any]) -> KillSwitch:
    return KillSwitch(row[0], row[1], orjson.loads(row[2]), row[3])


def actor_json(actor: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(actor)).decode()
