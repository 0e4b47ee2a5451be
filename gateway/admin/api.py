"""The admin API (DESIGN §8) on its own port: health, metrics, the approval queue and the
kill switches (their handlers: `gateway.admin.killswitch`).

Approval endpoints need a JWT with `auth.approver_scope`; a refusal of any kind (no token,
wrong scope, self-approval, wrong role, a call already decided or expired) is a JSON error
and an audit record. `/healthz`, `/readyz`, `/metrics` and `/openapi.json` need no token:
probes and scrapers call them, and they reveal no call data.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.admin.openapi import ADMIN_OPENAPI
from gateway.approvals.model import Approval, ApprovalStatus
from gateway.auth import Principal, authenticate_bearer
from gateway.core.errors import (
    GatewayError,
    InsufficientScope,
    InvalidArguments,
    NotFound,
    OverCapacity,
    RateLimited,
    RequestTimeout,
)
from gateway.listener.drain import DRAIN
from gateway.metrics import CONTENT_TYPE
from gateway.runtime import Runtime

MAX_LIST = 500
MAX_TEXT = 2000
# /readyz asks OPA at most this often, however often it is probed.
READY_PROBE_MAX_AGE_S = 1.0


# The admin app reads the gateway app's runtime (built in the gateway app's cleanup context).
RUNTIME_OF: web.AppKey[Callable[[], Runtime | None]] = web.AppKey("runtime_of")
# Under `toolgate serve --workers N` the admin port is worker 1's; a reload it accepted is
# passed on to the other workers through this (`gateway.serve`, `gateway.workers`).
RELOAD_OTHERS: web.AppKey[Callable[[], None]] = web.AppKey("reload_others")


def runtime_of(request: web.Request) -> Runtime:
    rt = request.app[RUNTIME_OF]()
    if rt is None:
        raise web.HTTPServiceUnavailable(text='{"status": "starting"}',
                                         content_type="application/json")
    return rt


async def approver(request: web.Request, rt: Runtime) -> Principal:
    """The caller's principal, which must hold the approver scope. A caller who does not
    (no valid token, or a token without the scope, such as the agent's own) is counted and
    rate-limited (`gateway.admin.refusals`), not audited one record each. A token naming a
    key `auth.jwks_url` may yet fetch (an IdP rotation) waits for that fetch."""
    try:
        principal = await authenticate_bearer(request.headers.get("Authorization"),
                                              rt.verifier)
    except GatewayError as exc:
        _refused(request, rt, exc, None)
        raise
    scope = rt.settings.auth.approver_scope
    if scope not in principal.scopes:
        refusal = InsufficientScope(
            f"approvals need the scope {scope}", missing_scopes=[scope],
            headers={"WWW-Authenticate": f'Bearer realm="toolgate", '
                                         f'error="insufficient_scope", scope="{scope}"'})
        _refused(request, rt, refusal, principal)
        raise refusal
    return principal


def _refused(request: web.Request, rt: Runtime, exc: GatewayError,
             principal: Principal | None) -> None:
    client = request.remote or "-"
    rt.refusals.count(client, str(exc.code), request.path,
                      principal.sub if principal is not None else None)
    if not rt.refusals.allow(client):
        raise RateLimited("too many refused requests; slow down",
                          headers={"Retry-After": "1"})


async def read_body(request: web.Request, rt: Runtime) -> dict[str, Any]:
    try:
        async with asyncio.timeout(rt.settings.body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout("the body did not arrive in time") from None
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidArguments("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidArguments("the body must be a JSON object")
    return value


def text_field(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidArguments(f"{name!r} must be a non-empty string of at most {MAX_TEXT} "
                               "characters")
    return value.strip()


def _public(rt: Runtime, approval: Approval) -> dict[str, Any]:
    """A held call as approvers see it: everything that would be sent."""
    return approval.public(rt.upstreams.credential_header(approval.plan.upstream))


def json_answer(value: Any) -> web.Response:
    return web.json_response(value, dumps=lambda v: orjson.dumps(v).decode())


async def list_approvals(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    await approver(request, rt)
    q = request.query
    status = q.get("status")
    if status is not None and status not in {s.value for s in ApprovalStatus}:
        raise InvalidArguments(f"unknown status {status!r}")
    given = q.get("limit", "100")
    # ASCII digits only: int() would also take " 5", "1_0" and other scripts' digits.
    if not re.fullmatch(r"[0-9]{1,6}", given):
        raise InvalidArguments("limit must be an integer")
    limit = int(given)
    if not 1 <= limit <= MAX_LIST:
        raise InvalidArguments(f"limit must be from 1 to {MAX_LIST}")
    approvals = await rt.store.list_approvals(status=status, tool=q.get("tool"),
                                              tenant=q.get("tenant"), limit=limit)
    return json_answer({"approvals": [_public(rt, a) for a in approvals]})


async def show_approval(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    await approver(request, rt)
    approval = await rt.store.get_approval(request.match_info["approval_id"])
    if approval is None:
        raise NotFound("no such approval")
    return json_answer(_public(rt, approval))


async def approve(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    approval_id = request.match_info["approval_id"]
    principal = await approver(request, rt)
    body = await read_body(request, rt)
    draining = request.app.get(DRAIN)
    if draining is not None and draining.draining:
        # The process is stopping: a call approved now could be cut mid-send by the drain.
        # The vote is not recorded; another replica, or this one restarted, takes it.
        # (A rejection sends nothing: it is still taken.)
        stopping = OverCapacity("this gateway is stopping (draining) and takes no approval; "
                                "nothing was recorded: approve again on another replica or "
                                "once it has restarted", headers={"Retry-After": "1"})
        rt.approvals.refused(approval_id, principal, stopping)
        raise stopping
    approval = await rt.approvals.approve(approval_id, principal,
                                          text_field(body, "comment", required=False))
    return json_answer(_public(rt, approval))


async def reject(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    approval_id = request.match_info["approval_id"]
    principal = await approver(request, rt)
    body = await read_body(request, rt)
    reason = text_field(body, "reason", required=True)
    assert reason is not None
    approval = await rt.approvals.reject(approval_id, principal, reason)
    return json_answer(_public(rt, approval))


async def operator(request: web.Request, rt: Runtime) -> Principal:
    """Kill switches (`gateway.admin.killswitch`) and reloads need the approver scope too:
    the people who may let a held call run are the people who may stop calls."""
    return await approver(request, rt)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    # The process is stopping (SIGTERM; `gateway.listener.drain`): unready at once, so the
    # load balancer sends no more calls while the ones in flight finish.
    draining = request.app.get(DRAIN)
    if draining is not None and draining.draining:
        return web.json_response({"status": "draining"}, status=503)
    rt = request.app[RUNTIME_OF]()
    if rt is None:
        return web.json_response({"status": "starting"}, status=503)
    keys_problem = rt.verifier.keys.problem()   # `auth.jwks_url` before its first fetch
    if keys_problem is not None:
        return web.json_response({"status": "unready", "keys": keys_problem}, status=503)
    try:
        await rt.store.ping()
    except GatewayError as exc:
        return web.json_response({"status": "unready", "store": exc.message}, status=503)
    # Off the event loop: a check may reopen the file and write the record saying so.
    audit_problem = await asyncio.to_thread(rt.audit.check)
    if audit_problem is not None:
        return web.json_response({"status": "unready", "audit": audit_problem}, status=503)
    bundle = rt.bundles.current
    # An OPA server is ready when it answers the decision path with a decision.
    policy_problems = await bundle.probe(rt.settings.policy.query, rt.settings.policy.opa_url,
                                         max_age_s=READY_PROBE_MAX_AGE_S)
    if policy_problems:
        return web.json_response({"status": "unready",
                                  "policy": [str(p) for p in policy_problems[:10]]},
                                 status=503)
    return web.json_response({"status": "ready", "policy_revision": bundle.revision,
                              "revisions": {"specs": bundle.spec_revision,
                                            "policies": bundle.policy_revision},
                              "tools": len(bundle.tools), "keys": rt.verifier.keys.status(),
                              "time": rt.clock.time()})


async def metrics(request: web.Request) -> web.StreamResponse:
    rt = runtime_of(request)
    return web.Response(body=rt.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(ADMIN_OPENAPI)


async def reload_policy(request: web.Request) -> web.StreamResponse:
    """Read the tool specs, policies and data again and serve them, if they load."""
    rt = runtime_of(request)
    who = await operator(request, rt)
    answer = await rt.reloader.reload("api", who)
    others = request.app.get(RELOAD_OTHERS)
    if others is not None:   # `--workers N`: every other worker reloads too
        others()
    return web.json_response(answer)


def add_routes(admin: web.Application) -> None:
    # Imported here: the kill switch handlers use this module's request helpers.
    from gateway.admin import killswitch  # noqa: PLC0415

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/openapi.json", openapi)
    admin.router.add_get("/v1/approvals", list_approvals)
    admin.router.add_get("/v1/approvals/{approval_id}", show_approval)
    admin.router.add_post("/v1/approvals/{approval_id}/approve", approve)
    admin.router.add_post("/v1/approvals/{approval_id}/reject", reject)
    admin.router.add_get("/v1/killswitch", killswitch.list_killswitches)
    admin.router.add_post("/v1/killswitch", killswitch.set_killswitch)
    admin.router.add_delete("/v1/killswitch/{scope}", killswitch.clear_killswitch)
    admin.router.add_post("/v1/policy/reload", reload_policy)
