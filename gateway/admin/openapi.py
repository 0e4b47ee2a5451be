"""The OpenAPI 3.1 document of the admin API, served at `/openapi.json` on the admin port.

It is checked against the running API by `tests/admin/test_openapi.py` (schemathesis): every
status an endpoint can answer is listed, every body has a schema, and every request the
document calls valid is one the API accepts (and the other way round).
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.approvals.model import ApprovalStatus
from gateway.state.killswitch import SCOPE

_ERROR = {"$ref": "#/components/schemas/Error"}
MAX_TEXT = 2000  # gateway.admin.api.MAX_TEXT
MAX_LIST = 500   # gateway.admin.api.MAX_LIST
# A character that is not whitespace as the API reads it (Python's `\S`, `str.strip`), spelled
# out: ECMA-262's `\S`, which is how clients and JSON Schema read a `pattern`, disagrees on
# U+001C-U+001F, U+0085 and U+FEFF.
NOT_SPACE = (r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
             r"\u3000]")
# gateway.state.killswitch.SCOPE: global | tenant:<t> | agent:<a> | tool:<name>
# which the API matches whole, so the document anchors it.
SCOPE_PATTERN = "^(" + SCOPE.pattern.replace(r"\S", NOT_SPACE) + ")$"
_SCOPE = {"type": "string", "pattern": SCOPE_PATTERN,
          "description": "global, tenant:<tenant>, agent:<agent> (no whitespace) or "
                         "tool:<tool name>"}
# Text is stripped, and must not be empty once it is; at most MAX_TEXT characters as sent.
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": NOT_SPACE,
         "description": f"free text with a non-space character, at most {MAX_TEXT} characters; "
                        "surrounding whitespace is removed"}

_ERROR_TEXT = {
    400: "Bad input: a malformed body, query parameter or scope",
    401: "No valid token",
    403: "Refused (scope, role, self-approval)",
    404: "No such approval",
    408: "The body did not arrive in time",
    409: "Not pending, expired, or already approved by you",
    413: "The body is too large",
    422: "The new bundle does not load (`errors`); the old one keeps serving",
    429: "Too many requests without a valid token from this client; see Retry-After",
    503: "Starting, or the state store or audit log is unavailable",
}
# Every endpoint that needs a token: 401 without a valid one (429 once the client has been
# refused too often), 403 without the approver scope, 503 while starting or the store is down.
_AUTH = (401, 403, 429, 503)
# Every endpoint that reads a JSON body.
_BODY = (400, 408, 413)


def _errors(*codes: int, described: dict[int, str] | None = None) -> dict[str, Any]:
    return {str(c): {"description": (described or {}).get(c, _ERROR_TEXT[c]),
                     "content": {"application/json": {"schema": _ERROR}}}
            for c in sorted(codes)}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _approval_response(description: str) -> dict[str, Any]:
    return _json(description, _ref("Approval"))


def _body(schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "approval_id", "in": "path", "required": True,
       "schema": {"type": "string", "minLength": 1}}
_DATE = {"type": "string", "format": "date-time"}
_STATUS = {"enum": [str(s) for s in ApprovalStatus]}
_NULLABLE_TEXT = {"type": ["string", "null"]}

ADMIN_OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Toolgate admin API", "version": __version__,
             "description": "Health, metrics, the approval queue and the kill switches. "
                            "Approval and kill switch endpoints need a bearer JWT with the "
                            "approver scope (auth.approver_scope)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["code", "message", "request_id"],
                          "properties": {"code": {"type": "string"},
                                         "message": {"type": "string"},
                                         "request_id": {"type": "string"}}}}},
            "Vote": {"type": "object", "required": ["approver", "comment", "at"],
                     "properties": {"approver": {"type": "object"},
                                    "comment": _NULLABLE_TEXT, "at": _DATE}},
            "Call": {
                "type": "object",
                "description": "Everything the upstream will receive, byte for byte; only "
                               "Host, Content-Length and the credential (named, never "
                               "shown) are added when it is sent",
                "required": ["upstream", "method", "path", "query", "headers", "body"],
                "properties": {
                    "upstream": {"type": "string"}, "method": {"type": "string"},
                    "path": {"type": "string", "description": "raw, percent-encoded"},
                    "query": {"type": "string"},
                    "headers": {"type": "object",
                                "additionalProperties": {"type": "string"}},
                    "body": {"type": "string", "description": "the exact body, as text"},
                    "credential_header": _NULLABLE_TEXT,
                }},
            "Approval": {"type": "object",
                         "required": ["id", "status", "tool", "args", "call", "reasons",
                                      "principal", "decision_id", "call_hash",
                                      "approvals_required", "approver_roles", "approvals",
                                      "created_at", "expires_at", "updated_at",
                                      "idempotency_key", "run_id", "reason", "error_code",
                                      "result"],
                         "properties": {
                "id": {"type": "string"},
                "status": _STATUS,
                "tool": {"type": "string"},
                "args": {"type": "object", "description": "the exact arguments"},
                "call": _ref("Call"),
                "run_id": _NULLABLE_TEXT,
                "reasons": {"type": "array", "items": {"type": "string"}},
                "principal": {"type": "object", "description": "who asked: sub, agent, "
                                                               "tenant"},
                "decision_id": {"type": "string"},
                "call_hash": {"type": "string"},
                "approvals_required": {"type": "integer"},
                "approver_roles": {"type": "array", "items": {"type": "string"}},
                "approvals": {"type": "array", "items": _ref("Vote")},
                "created_at": _DATE,
                "expires_at": _DATE,
                "updated_at": _DATE,
                "idempotency_key": _NULLABLE_TEXT,
                "reason": _NULLABLE_TEXT,
                "error_code": {**_NULLABLE_TEXT, "description":
                               "not_sent: the code the call was stopped with, which its agent "
                               "is answered with (killed, budget_exceeded, upstream_error, "
                               "tool_not_allowed, internal_error); failed: upstream_timeout "
                               "or upstream_error"},
                "result": {"type": ["object", "null"], "properties": {
                    "status": {"type": "integer"}, "content_type": _NULLABLE_TEXT,
                    "body": {}}},
            }},
            "KillSwitch": {"type": "object", "required": ["scope", "reason", "actor", "since"],
                           "properties": {
                               "scope": _SCOPE,
                               "reason": {"type": "string"},
                               "actor": {"type": "object", "description": "who set it"},
                               "since": _DATE,
                               "warning": {"type": "string", "description":
                                           "set for an agent with no held call in the store: "
                                           "it may stop nothing"}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {
            "summary": "Liveness", "security": [],
            "responses": {"200": _json("alive", {
                "type": "object", "required": ["status"],
                "properties": {"status": {"const": "ok"}}})}}},
        "/readyz": {"get": {
            "summary": "Readiness: policy and specs loaded, store reachable", "security": [],
            "responses": {
                "200": _json("ready", {
                    "type": "object",
                    "required": ["status", "policy_revision", "revisions", "tools", "time"],
                    "properties": {
                        "status": {"const": "ready"},
                        "policy_revision": {"type": "string"},
                        "revisions": {"type": "object", "required": ["specs", "policies"],
                                      "properties": {"specs": {"type": "string"},
                                                     "policies": {"type": "string"}}},
                        "tools": {"type": "integer", "minimum": 0},
                        "time": {"type": "number", "description": "Unix time, seconds"}}}),
                "503": _json("not ready: starting, the store is unreachable, or the "
                             "process is stopping (draining)", {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"enum": ["starting", "unready", "draining"]},
                                   "store": {"type": "string"}}})}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "security": [],
            "responses": {
                "200": {"description": "text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(503, described={503: "Starting"})}}},
        "/openapi.json": {"get": {
            "summary": "This document", "security": [],
            "responses": {"200": _json("the OpenAPI document", {"type": "object"})}}},
        "/v1/approvals": {"get": {
            "summary": "List held calls, newest first",
            "parameters": [
                {"name": "status", "in": "query", "schema": _STATUS},
                {"name": "tool", "in": "query", "schema": {"type": "string"}},
                {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100}},
            ],
            "responses": {"200": _json("approvals", {
                "type": "object", "required": ["approvals"], "properties": {"approvals": {
                    "type": "array", "items": _ref("Approval")}}}),
                **_errors(400, *_AUTH)}}},
        "/v1/approvals/{approval_id}": {"get": {
            "summary": "Show one held call: exact arguments, reasons, who asked, expiry",
            "parameters": [_ID],
            "responses": {"200": _approval_response("the approval"),
                          **_errors(404, *_AUTH)}}},
        "/v1/approvals/{approval_id}/approve": {"post": {
            "summary": "Approve; when enough distinct approvers have, the call runs once",
            "parameters": [_ID],
            "requestBody": _body({"type": "object", "properties": {
                "comment": {**_TEXT, "type": ["string", "null"],
                            "description": f"{_TEXT['description']}; null is no comment"}}},
                required=False),
            "responses": {"200": _approval_response("the approval after the vote"),
                          **_errors(404, 409, *_BODY, *_AUTH, described={
                              503: f"{_ERROR_TEXT[503]}; or over_capacity: this gateway is "
                                   "stopping (draining) and records no vote, approve on "
                                   "another replica or once it has restarted"})}}},
        "/v1/approvals/{approval_id}/reject": {"post": {
            "summary": "Reject with a reason; the agent sees policy_denied with it",
            "parameters": [_ID],
            "requestBody": _body({"type": "object", "required": ["reason"],
                                  "properties": {"reason": _TEXT}}, required=True),
            "responses": {"200": _approval_response("the rejected approval"),
                          **_errors(404, 409, *_BODY, *_AUTH)}}},
        "/v1/killswitch": {
            "get": {"summary": "Active kill switches",
                    "responses": {"200": _json("switches", {
                        "type": "object", "required": ["killswitches"],
                        "properties": {"killswitches": {"type": "array",
                                                        "items": _ref("KillSwitch")}}}),
                                  **_errors(*_AUTH)}},
            "post": {"summary": "Stop calls by scope on every replica within a second",
                     "requestBody": _body({
                         "type": "object", "required": ["scope", "reason"],
                         "properties": {
                             "scope": {**_SCOPE, "maxLength": MAX_TEXT},
                             "reason": _TEXT,
                             "force": {"type": "boolean", "default": False, "description":
                                       "set it even for a tool or tenant the gateway does "
                                       "not know"}}}, required=True),
                     "responses": {"200": _json("the switch", _ref("KillSwitch")),
                                   **_errors(422, *_BODY, *_AUTH, described={
                                       422: "The scope names a tool that is not loaded, or a "
                                            "tenant the gateway has not seen "
                                            "(`unknown_scope`); `force: true` sets it all "
                                            "the same"})}}},
        "/v1/policy/reload": {"post": {
            "summary": "Reload the tool specs, policies and data from their files",
            "responses": {"200": _json("the revision now serving", {
                "type": "object",
                "required": ["status", "policy_revision", "previous_revision", "revisions"],
                "properties": {
                    "status": {"enum": ["reloaded", "unchanged"]},
                    "policy_revision": {"type": "string"},
                    "previous_revision": {"type": "string"},
                    "revisions": {"type": "object", "required": ["specs", "policies"],
                                  "properties": {"specs": {"type": "string"},
                                                 "policies": {"type": "string"}}}}}),
                **_errors(422, *_AUTH)}}},
        "/v1/killswitch/{scope}": {"delete": {
            "summary": "Revive: clear a kill switch",
            "parameters": [{"name": "scope", "in": "path", "required": True,
                            "schema": _SCOPE}],
            "responses": {"200": _json("the switch that was cleared", {
                "allOf": [_ref("KillSwitch")],
                "required": ["cleared"], "properties": {"cleared": {"const": True}}}),
                **_errors(400, 404, *_AUTH, described={404: "No such kill switch"})}}},
    },
}
