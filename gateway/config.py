"""The gateway config (`toolgate.yaml`, DESIGN §2.3) as one typed, validated `Settings`.

Loading order: read YAML (with lines) → apply `TOOLGATE_<KEY>` environment overrides → check
against `CONFIG_SCHEMA` (unknown keys are errors) → construct frozen dataclasses. Relative
paths are relative to the config file. Nothing here opens a socket or reads a secret; the
secrets named by `env:`/`file:` are read when the gateway starts (`gateway.upstreams.client`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import yamlfile
from gateway.audit.settings import AuditSettings, audit_settings, problems
from gateway.config_schema import CONFIG_SCHEMA, DEFAULT_TAKEOVER_MS, TAKEOVER_HEARTBEATS
from gateway.core.errors import LoadError, LoadErrors
from gateway.state.budgets import BudgetSettings, Limits

ENV_PREFIX = "TOOLGATE_"
# Kubernetes injects these for a Service named "toolgate" (docker links did the same); they
# are not config, and no config key can look like them.
_SERVICE_LINKS = re.compile(r"^TOOLGATE_(SERVICE_(HOST|PORT)(_\w+)?|PORT(_\w+)?)$")
# Read by `toolgate approvals`, not by the gateway.
CLI_VARIABLES = frozenset({"TOOLGATE_ADMIN_URL", "TOOLGATE_APPROVER_TOKEN"})


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Credential:
    header: str
    prefix: str = ""
    env: str | None = None
    file: Path | None = None


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    credential: Credential | None = None
    max_connections: int = 100


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_refresh_s: float = 300.0        # background refresh of a `jwks_url`
    jwks_miss_refresh_s: float = 30.0    # at most one fetch this often for an unknown kid
    jwks_timeout_s: float = 3.0
    public_key_file: Path | None = None
    hs256_secret_env: str | None = None
    leeway_s: int = 30
    approver_scope: str = "toolgate:approve"
    token_cache_size: int = 10_000


@dataclass(frozen=True)
class PolicySettings:
    engine: str = "embedded"
    query: str = "data.toolgate.decision"
    opa_url: str = "http://127.0.0.1:8181"
    timeout_ms: int = 100
    watch_ms: int = 0          # > 0: reload when the spec or policy files change


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry export (`gateway.tracing`): off unless an OTLP endpoint is set."""
    otlp_endpoint: str | None = None     # OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = "toolgate"
    timeout_s: float = 5.0


@dataclass(frozen=True)
class LogSettings:
    """Operational logs on stderr (`gateway.logs`); the audit log is separate."""
    level: str = "info"
    format: str = "auto"        # auto: json unless stderr is a terminal


@dataclass(frozen=True)
class ShutdownSettings:
    """What SIGTERM does (`gateway.serve`): unready at once, accept for `delay_s`, then
    stop accepting and let calls in flight finish for up to `drain_s`."""
    delay_s: float = 0.0
    drain_s: float = 15.0


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    include_args: bool = False
    timeout_ms: int = 3000
    max_attempts: int = 5
    backoff_ms: int = 500


@dataclass(frozen=True)
class Settings:
    base_dir: Path
    auth: AuthSettings
    upstreams: Mapping[str, Upstream]
    listen: Address = Address("127.0.0.1", 8080)
    admin_listen: Address = Address("127.0.0.1", 8081)
    tool_specs: tuple[Path, ...] = ()
    policies: tuple[Path, ...] = ()
    policy: PolicySettings = field(default_factory=PolicySettings)
    store: str = "sqlite:///state/toolgate.db"
    audit: AuditSettings = field(default_factory=AuditSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    log: LogSettings = field(default_factory=LogSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    max_body_bytes: int = 1_048_576
    max_response_bytes: int = 10_485_760
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    max_connections: int = 1024
    admin_max_connections: int = 128
    admin_max_connections_per_client: int = 16
    max_headers: int = 64
    max_header_bytes: int = 8190
    approval_ttl_seconds: int = 86_400
    approval_sweep_interval_s: float = 1.0
    approval_takeover_after_s: float = 10.0
    forwarded_host: str = "127.0.0.1:8080"
    approval_wait_s: float = 2.0
    webhook: WebhookSettings | None = None
    fail_open: bool = False
    idempotency_retention_s: float = 86_400.0
    idempotency_lease_s: float = 60.0
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    run_retention_s: float = 86_400.0
    killswitch_poll_s: float = 0.5

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of `store`, resolved against the config file; None for others."""
        if not self.store.startswith("sqlite:///"):
            return None
        return self.base_dir / self.store.removeprefix("sqlite:///")


def load(path: Path, environ: Mapping[str, str]) -> Settings:
    """Read, override, validate and construct. Raises `LoadErrors` listing every problem."""
    doc = yamlfile.load(path)
    raw = doc.value if doc.value is not None else {}
    if not isinstance(raw, dict):
        raise LoadErrors([doc.error((), "the config must be a mapping")])
    errors = _apply_env(raw, environ, str(path))
    errors += yamlfile.schema_errors(doc, raw, CONFIG_SCHEMA)
    policy = raw.get("policy")
    if isinstance(policy, dict) and policy.get("engine") == "opa":
        errors += _opa_problems(doc, policy)
    if isinstance(raw.get("audit", {}), dict):
        errors += [doc.error(path, message) for path, message in problems(raw.get("audit", {}))]
    auth = raw.get("auth")
    if isinstance(auth, dict) and "jwks_url" in auth:
        from gateway.jwks.url import auth_problems  # noqa: PLC0415 (https, or loopback)

        errors += [doc.error(path, message) for path, message in auth_problems(auth)]
    for key in ("listen", "admin_listen"):
        if isinstance(raw.get(key), str):
            try:
                parse_address(raw[key])
            except ValueError as exc:
                errors.append(doc.error((key,), f"{key}: {exc}"))
    approvals = raw.get("approvals")
    if isinstance(approvals, dict):
        sweep = approvals.get("sweep_interval_ms", 1000)
        takeover = approvals.get("takeover_after_ms")
        if (isinstance(sweep, int) and isinstance(takeover, int)
                and takeover < TAKEOVER_HEARTBEATS * sweep):
            # SECURITY: an instance heartbeats once a sweep; a takeover sooner than a few
            # missed heartbeats would resend a call a live instance is still sending.
            errors.append(doc.error(("approvals", "takeover_after_ms"),
                                    f"approvals.takeover_after_ms must be at least "
                                    f"{TAKEOVER_HEARTBEATS} sweeps ({TAKEOVER_HEARTBEATS * sweep}"
                                    " ms): a live instance heartbeats once a sweep"))
    if errors:
        raise LoadErrors(errors)
    return _construct(raw, path.resolve().parent)


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], file: str) -> list[LoadError]:
    """`TOOLGATE_AUDIT__FILE=x` sets `audit.file`; values are parsed as YAML scalars/lists."""
    errors = []
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or _SERVICE_LINKS.match(name)
                or name in CLI_VARIABLES):
            continue
        keys = name.removeprefix(ENV_PREFIX).lower().split("__")
        if any(not k for k in keys):
            errors.append(LoadError(file, None, f"environment variable {name}: malformed key"))
            continue
        raw_value = environ[name]
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError:
            value = raw_value
        # Numbers, booleans and lists are parsed; a string is taken exactly as given, so
        # `TOOLGATE_..._PREFIX="Bearer "` keeps its space and "#x" is not a comment.
        if isinstance(value, str) or (value is None and raw_value.strip() not in
                                      ("", "null", "~")):
            value = raw_value
        problem = _unknown(keys)
        if problem:
            errors.append(LoadError(file, None, f"environment variable {name}: {problem}"))
            continue
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                errors.append(LoadError(file, None, f"environment variable {name}: "
                                        f"{key!r} is not a section"))
                break
            node = child
        else:
            node[keys[-1]] = value
    return errors


def _unknown(keys: list[str]) -> str | None:
    """Why CONFIG_SCHEMA has no place for this key path, or None (any name under upstreams)."""
    schema: Any = CONFIG_SCHEMA
    for depth, key in enumerate(keys):
        where = f" under {'.'.join(keys[:depth])!r}" if depth else ""
        if schema.get("type") != "object":
            return f"{'.'.join(keys[:depth])!r} is not a section"
        props = schema.get("properties", {})
        if key in props:
            schema = props[key]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        else:
            return f"unknown key {key!r}{where}"
    return None


def parse_address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (port 0-65535)")
    return Address(host.strip("[]"), int(port))


def _construct(raw: Mapping[str, Any], base: Path) -> Settings:
    def rel(p: str) -> Path:
        return (base / p).resolve()

    auth = raw["auth"]
    upstreams = {}
    for name, up in raw["upstreams"].items():
        cred = up.get("credential")
        upstreams[name] = Upstream(
            name=name, url=up["url"].rstrip("/"),
            max_connections=up.get("max_connections", 100),
            credential=None if cred is None else Credential(
                header=cred["header"], prefix=cred.get("prefix", ""), env=cred.get("env"),
                file=rel(cred["file"]) if "file" in cred else None),
        )
    policy = raw.get("policy", {})
    limits = raw.get("limits", {})
    tracing = raw.get("tracing", {})
    approvals = raw.get("approvals", {})
    listen = parse_address(raw.get("listen", "127.0.0.1:8080"))
    return Settings(
        base_dir=base,
        listen=listen,
        forwarded_host=raw.get("forwarded_host", str(listen)),
        admin_listen=parse_address(raw.get("admin_listen", "127.0.0.1:8081")),
        tool_specs=tuple(rel(p) for p in raw.get("tool_specs", ["tool_specs/"])),
        policies=tuple(rel(p) for p in raw.get("policies", ["policies/"])),
        policy=PolicySettings(**policy),
        store=raw.get("store", "sqlite:///state/toolgate.db"),
        auth=AuthSettings(
            issuer=auth["issuer"], audience=auth["audience"],
            algorithms=tuple(auth["algorithms"]),
            jwks_file=rel(auth["jwks_file"]) if "jwks_file" in auth else None,
            jwks_url=auth.get("jwks_url"),
            jwks_refresh_s=float(auth.get("jwks_refresh_s", 300)),
            jwks_miss_refresh_s=float(auth.get("jwks_miss_refresh_s", 30)),
            jwks_timeout_s=auth.get("jwks_timeout_ms", 3000) / 1000,
            public_key_file=rel(auth["public_key_file"]) if "public_key_file" in auth else None,
            hs256_secret_env=auth.get("hs256_secret_env"),
            leeway_s=auth.get("leeway_s", 30),
            approver_scope=auth.get("approver_scope", "toolgate:approve"),
            token_cache_size=auth.get("token_cache_size", 10_000),
        ),
        upstreams=upstreams,
        audit=audit_settings(raw.get("audit", {}), rel),
        tracing=TracingSettings(otlp_endpoint=tracing.get("otlp_endpoint"),
                                service_name=tracing.get("service_name", "toolgate"),
                                timeout_s=tracing.get("timeout_ms", 5000) / 1000),
        log=LogSettings(**raw.get("log", {})),
        shutdown=ShutdownSettings(delay_s=raw.get("shutdown", {}).get("delay_ms", 0) / 1000,
                                  drain_s=raw.get("shutdown", {}).get("drain_ms", 15_000) / 1000),
        max_body_bytes=limits.get("max_body_bytes", 1_048_576),
        max_response_bytes=limits.get("max_response_bytes", 10_485_760),
        header_timeout_s=limits.get("header_timeout_ms", 10_000) / 1000,
        body_timeout_s=limits.get("body_timeout_ms", 30_000) / 1000,
        idle_timeout_s=limits.get("idle_timeout_ms", 60_000) / 1000,
        send_timeout_s=limits.get("send_timeout_ms", 30_000) / 1000,
        max_connections=limits.get("max_connections", 1024),
        admin_max_connections=limits.get("admin_max_connections", 128),
        admin_max_connections_per_client=limits.get("admin_max_connections_per_client", 16),
        max_headers=limits.get("max_headers", 64),
        max_header_bytes=limits.get("max_header_bytes", 8190),
        approval_ttl_seconds=approvals.get("ttl_seconds", 86_400),
        approval_sweep_interval_s=approvals.get("sweep_interval_ms", 1000) / 1000,
        approval_takeover_after_s=approvals.get(
            "takeover_after_ms",
            max(DEFAULT_TAKEOVER_MS, 10 * approvals.get("sweep_interval_ms", 1000))) / 1000,
        approval_wait_s=approvals.get("wait_ms", 2000) / 1000,
        webhook=WebhookSettings(**approvals["webhook"]) if "webhook" in approvals else None,
        fail_open=raw.get("fail_open", False),
        idempotency_retention_s=raw.get("idempotency", {}).get("retention_hours", 24) * 3600,
        idempotency_lease_s=float(raw.get("idempotency", {}).get("lease_seconds", 60)),
        budgets=_budgets(raw.get("budgets", {})),
        run_retention_s=raw.get("budgets", {}).get("retention_hours", 24) * 3600,
        killswitch_poll_s=raw.get("killswitch", {}).get("poll_ms", 500) / 1000,
    )


def _limits(raw: Mapping[str, Any]) -> Limits:
    return Limits(max_tool_calls=raw.get("max_tool_calls"),
                  max_calls_per_tool=dict(raw.get("max_calls_per_tool", {})),
                  max_spend={k: float(v) for k, v in raw.get("max_spend", {}).items()})


def _budgets(raw: Mapping[str, Any]) -> BudgetSettings:
    return BudgetSettings(default=_limits(raw),
                          tenants={t: _limits(v) for t, v in raw.get("tenants", {}).items()})


def _opa_problems(doc: yamlfile.YamlDoc, policy: dict[str, Any]) -> list[LoadError]:
    from gateway.policy.opa import server_address  # noqa: PLC0415

    if isinstance(policy.get("opa_url"), str):
        try:
            server_address(policy["opa_url"])
        except ValueError as exc:
            return [doc.error(("policy", "opa_url"), str(exc))]
    return []
