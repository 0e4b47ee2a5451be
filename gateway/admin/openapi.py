"""The OpenAPI 3.1 document of the admin API, served at `/openapi.json` on the admin port."""

from __future__ import annotations

from typing import Any

from gateway import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad input", 401: "No valid token", 403: "Refused (scope, role, "
            "self-approval)", 404: "No such approval", 409: "Not pending, expired, or "
            "already approved by you", 503: "State store or audit log unavailable"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _approval_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Approval"}}}}


_ID = {"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}}

ADMIN_OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Toolgate admin API", "version": __version__,
             "description": "Health, metrics and the approval queue. Approval endpoints need "
                            "a bearer JWT with the approver scope (auth.approver_scope)."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["code", "message", "request_id"],
                          "properties": {"code": {"type": "string"},
                                         "message": {"type": "string"},
                                         "request_id": {"type": "string"}}}}},
            "Vote": {"type": "object", "properties": {
                "approver": {"type": "object"}, "comment": {"type": ["string", "null"]},
                "at": {"type": "string", "format": "date-time"}}},
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
                    "credential_header": {"type": ["string", "null"]},
                }},
            "Approval": {"type": "object",
                         "required": ["id", "status", "tool", "args", "call"],
                         "properties": {
                "id": {"type": "string"},
                "status": {"enum": ["pending", "approved", "executing", "executed", "failed",
                                    "outcome_unknown", "rejected", "expired"]},
                "tool": {"type": "string"},
                "args": {"type": "object", "description": "the exact arguments"},
                "call": {"$ref": "#/components/schemas/Call"},
                "run_id": {"type": ["string", "null"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "principal": {"type": "object", "description": "who asked: sub, agent, "
                                                               "tenant"},
                "decision_id": {"type": "string"},
                "call_hash": {"type": "string"},
                "approvals_required": {"type": "integer"},
                "approver_roles": {"type": "array", "items": {"type": "string"}},
                "approvals": {"type": "array", "items": {"$ref": "#/components/schemas/Vote"}},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "idempotency_key": {"type": ["string", "null"]},
                "reason": {"type": ["string", "null"]},
                "result": {"type": ["object", "null"], "properties": {
                    "status": {"type": "integer"}, "content_type": {"type": ["string", "null"]},
                    "body": {}}},
            }},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "Readiness: policy and specs loaded, store reachable",
                            "security": [], "responses": {"200": {"description": "ready"},
                                                          "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "text exposition"}}}},
        "/v1/approvals": {"get": {
            "summary": "List held calls, newest first",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string"}},
                {"name": "tool", "in": "query", "schema": {"type": "string"}},
                {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}},
            ],
            "responses": {"200": {"description": "approvals", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"approvals": {
                    "type": "array", "items": {"$ref": "#/components/schemas/Approval"}}}}}}},
                **_errors(400, 401, 403, 503)}}},
        "/v1/approvals/{approval_id}": {"get": {
            "summary": "Show one held call: exact arguments, reasons, who asked, expiry",
            "parameters": [_ID],
            "responses": {"200": _approval_response("the approval"),
                          **_errors(401, 403, 404, 503)}}},
        "/v1/approvals/{approval_id}/approve": {"post": {
            "summary": "Approve; when enough distinct approvers have, the call runs once",
            "parameters": [_ID],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"comment": {"type": "string",
                                                             "maxLength": 2000}}}}}},
            "responses": {"200": _approval_response("the approval after the vote"),
                          **_errors(400, 401, 403, 404, 409, 503)}}},
        "/v1/approvals/{approval_id}/reject": {"post": {
            "summary": "Reject with a reason; the agent sees policy_denied with it",
            "parameters": [_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["reason"],
                "properties": {"reason": {"type": "string", "maxLength": 2000}}}}}},
            "responses": {"200": _approval_response("the rejected approval"),
                          **_errors(400, 401, 403, 404, 409, 503)}}},
        "/v1/killswitch": {
            "get": {"summary": "Active kill switches",
                    "responses": {"200": {"description": "switches"},
                                  **_errors(401, 403, 503)}},
            "post": {"summary": "Stop calls by scope on every replica within a second",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["scope", "reason"],
                                    "properties": {
                                        "scope": {"type": "string", "pattern":
                                                  "^(global|tenant:.+|agent:.+|tool:.+)$"},
                                        "reason": {"type": "string"}}}}}},
                     "responses": {"200": {"description": "the switch"},
                                   **_errors(400, 401, 403, 503)}}},
        "/v1/killswitch/{scope}": {"delete": {
            "summary": "Revive: clear a kill switch",
            "parameters": [{"name": "scope", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "cleared"}, **_errors(401, 403, 404, 503)}}},
    },
}
