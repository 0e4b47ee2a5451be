"""The gateway config's JSON Schema (DESIGN §2.3): every key a `toolgate.yaml` may hold.

Unknown keys are errors (`additionalProperties: false` everywhere); `gateway.config` checks
a document against it, with the file and line of each problem, before building `Settings`.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.settings import AUDIT_SCHEMA

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
              "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512"]

DEFAULT_TAKEOVER_MS = 10_000
TAKEOVER_HEARTBEATS = 5   # missed heartbeats before a sending instance counts as stopped
_STR = {"type": "string", "minLength": 1}
_POS_INT = {"type": "integer", "minimum": 1}

_LIMITS: dict[str, Any] = {  # a run's budget, as a default and per tenant
    "max_tool_calls": _POS_INT,
    "max_calls_per_tool": {"type": "object", "additionalProperties": _POS_INT},
    "max_spend": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["auth", "upstreams"],
    "properties": {
        "listen": _STR,
        "admin_listen": _STR,
        # What upstreams get as X-Forwarded-Host (default: `listen`); never the agent's Host.
        "forwarded_host": {"type": "string", "pattern": r"^[A-Za-z0-9.:\[\]_-]{1,255}$"},
        "tool_specs": {"type": "array", "items": _STR, "minItems": 1},
        "policies": {"type": "array", "items": _STR, "minItems": 1},
        "policy": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "engine": {"enum": ["embedded", "opa"]},
                "query": {"type": "string", "pattern": r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$"},
                "opa_url": _STR,
                "timeout_ms": _POS_INT,
                "watch_ms": {"type": "integer", "maximum": 3_600_000,   # 0: off
                             "anyOf": [{"const": 0}, {"minimum": 100}]},
            },
        },
        "store": {"type": "string", "pattern": r"^(sqlite:///.+|postgres(ql)?://.+)$"},
        "auth": {
            "type": "object", "additionalProperties": False,
            "required": ["issuer", "audience", "algorithms"],
            "properties": {
                "issuer": _STR,
                "audience": _STR,
                # SECURITY: "none" is not in the enum, so it can never be allowed.
                "algorithms": {"type": "array", "items": {"enum": ALGORITHMS}, "minItems": 1},
                "jwks_file": _STR,
                # An IdP's JWKS endpoint (`gateway.jwks`): cached, refreshed in the
                # background, and fetched again (rate-limited) for an unknown `kid`.
                "jwks_url": {"type": "string", "pattern": r"^https?://[^\s]+$"},
                "jwks_refresh_s": {"type": "integer", "minimum": 10, "maximum": 86_400},
                "jwks_miss_refresh_s": {"type": "integer", "minimum": 1, "maximum": 3600},
                "jwks_timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60_000},
                "public_key_file": _STR,
                "hs256_secret_env": _STR,
                "leeway_s": {"type": "integer", "minimum": 0, "maximum": 300},
                "approver_scope": _STR,
                "token_cache_size": {"type": "integer", "minimum": 0},
            },
            "oneOf": [
                {"required": ["jwks_file"]},
                {"required": ["jwks_url"]},
                {"required": ["public_key_file"]},
                {"required": ["hs256_secret_env"]},
            ],
        },
        "upstreams": {
            "type": "object", "minProperties": 1,
            "propertyNames": {"pattern": r"^[a-z0-9_.-]+$"},
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["url"],
                "properties": {
                    "url": {"type": "string", "pattern": r"^https?://"},
                    "credential": {
                        "type": "object", "additionalProperties": False,
                        "required": ["header"],
                        "properties": {"header": _STR, "prefix": {"type": "string"},
                                       "env": _STR, "file": _STR},
                        "oneOf": [{"required": ["env"]}, {"required": ["file"]}],
                    },
                    "max_connections": _POS_INT,
                },
            },
        },
        "audit": AUDIT_SCHEMA,
        "tracing": {
            "type": "object", "additionalProperties": False,
            "properties": {"otlp_endpoint": {"type": "string", "pattern": r"^https?://"},
                           "service_name": _STR, "timeout_ms": _POS_INT},
        },
        "limits": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "max_body_bytes": _POS_INT, "max_response_bytes": _POS_INT,
                # Against slow and hostile clients, on both ports (gateway.listener).
                "header_timeout_ms": _POS_INT, "body_timeout_ms": _POS_INT,
                "idle_timeout_ms": _POS_INT, "send_timeout_ms": _POS_INT,
                "max_connections": _POS_INT, "admin_max_connections": _POS_INT,
                "admin_max_connections_per_client": _POS_INT,
                "max_headers": {"type": "integer", "minimum": 8, "maximum": 512},
                "max_header_bytes": {"type": "integer", "minimum": 1024,
                                     "maximum": 65536},
            },
        },
        "approvals": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "ttl_seconds": _POS_INT,
                "sweep_interval_ms": _POS_INT,
                "takeover_after_ms": _POS_INT,
                "wait_ms": {"type": "integer", "minimum": 0},
                "webhook": {
                    "type": "object", "additionalProperties": False, "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "pattern": r"^https?://"},
                        "include_args": {"type": "boolean"},
                        "timeout_ms": _POS_INT,
                        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20},
                        "backoff_ms": _POS_INT,
                    },
                },
            },
        },
        "fail_open": {"type": "boolean"},
        # Operational logs (not the audit log): JSON lines on stderr unless stderr is a
        # terminal (`auto`), or as asked.
        "log": {
            "type": "object", "additionalProperties": False,
            "properties": {"level": {"enum": ["debug", "info", "warning", "error"]},
                           "format": {"enum": ["auto", "json", "console"]}},
        },
        # SIGTERM: /readyz turns unready at once; the agent port keeps accepting for
        # `delay_ms` (for load balancers that poll readiness), then stops accepting and
        # lets calls in flight finish for up to `drain_ms` before the process exits.
        "shutdown": {
            "type": "object", "additionalProperties": False,
            "properties": {"delay_ms": {"type": "integer", "minimum": 0, "maximum": 300_000},
                           "drain_ms": {"type": "integer", "minimum": 0, "maximum": 600_000}},
        },
        "idempotency": {
            "type": "object", "additionalProperties": False,
            "properties": {"retention_hours": {"type": "number", "exclusiveMinimum": 0},
                           "lease_seconds": _POS_INT},
        },
        "budgets": {
            "type": "object", "additionalProperties": False,
            "properties": {
                **_LIMITS,
                "retention_hours": {"type": "number", "exclusiveMinimum": 0},
                "tenants": {"type": "object", "additionalProperties": {
                    "type": "object", "additionalProperties": False, "properties": _LIMITS}},
            },
        },
        "killswitch": {
            "type": "object", "additionalProperties": False,
            "properties": {"poll_ms": {"type": "integer", "minimum": 50, "maximum": 1000}},
        },
    },
}
