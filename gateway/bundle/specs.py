"""Tool specs (`tool_specs/*.yaml`, DESIGN §2.1), compiled once at load.

Each spec is checked against `TOOL_SPEC_SCHEMA` (unknown keys are errors), its
`input_schema`/`output_schema` are compiled (`gateway.bundle.schemas`), its
`forward.headers` checked against what may never be taken from an agent, and its route goes
into the route table; a second tool on the same method and path shape is an error.
All problems are reported together, each with `file:line`. Each tool has a `revision` of
its own (over its spec as loaded, in canonical JSON): a decision record names it, so a
replay can tell which calls were judged by a tool that has changed since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from jsonschema.protocols import Validator

from gateway import yamlfile
from gateway.bundle.routes import PathTemplate, RouteTable
from gateway.bundle.schemas import compile_schema, pii_pointers, unreached_pii
from gateway.core.errors import LoadError, LoadErrors
from gateway.upstreams.headers import refused_name

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
RESERVED_PREFIXES = ("/v1/approvals",)  # the gateway's own routes on the agent port

TOOL_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "upstream", "route", "input_schema"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9_.-]+$", "maxLength": 128},
        "description": {"type": "string"},
        "upstream": {"type": "string", "minLength": 1},
        "route": {
            "type": "object", "additionalProperties": False, "required": ["method", "path"],
            "properties": {"method": {"enum": METHODS}, "path": {"type": "string"}},
        },
        "forward": {
            "type": "object", "additionalProperties": False, "required": ["path"],
            "properties": {
                "path": {"type": "string"},
                # Extra agent headers this tool's upstream needs (an allow-list, DESIGN §3).
                "headers": {"type": "array", "items": {"type": "string", "minLength": 1},
                            "uniqueItems": True},
            },
        },
        "scopes": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "tier": {"enum": ["green", "yellow", "red"]},
        "idempotency": {"enum": ["required", "optional", "none"]},
        "input_schema": {"type": "object"},
        "output_schema": {"type": "object"},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600_000},
        "mode": {"enum": ["enforce", "shadow"]},
        "spend": {"type": "string", "minLength": 1},
    },
}


class Tier(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class Idempotency(StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


class Mode(StrEnum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    upstream: str
    method: str
    route: PathTemplate
    forward: PathTemplate
    scopes: tuple[str, ...]
    tier: Tier
    idempotency: Idempotency
    input_validator: Validator
    output_validator: Validator | None
    pii_pointers: tuple[str, ...]   # JSON pointers of `x-pii: true` argument fields
    arguments: frozenset[str]        # the top-level argument names input_schema declares
    timeout_ms: int
    mode: Mode
    source: str                      # file:line, for messages
    spend: str | None = None         # numeric argument that counts toward the run's spend
    forward_headers: tuple[str, ...] = ()   # extra agent headers passed on (allow-list)
    revision: str = ""               # SHA-256 (16 hex) of this spec's canonical JSON


def spec_revision(raw: Mapping[str, Any]) -> str:
    """A tool's revision: its spec as loaded, in canonical JSON (sorted keys, no
    whitespace), so layout and comments do not count and any change of meaning does."""
    try:
        text = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer past 64 bits (a schema bound), which orjson cannot write
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(text).hexdigest()[:16]


@dataclass(frozen=True)
class SpecSet:
    """Every tool, by name and by route. Immutable once built."""

    tools: Mapping[str, ToolSpec]
    routes: RouteTable[ToolSpec]
    revision: str = ""               # SHA-256 over every spec file, in path order


def spend_problem(schema: Mapping[str, Any], name: str) -> str | None:
    """Why argument `name` cannot count toward a run's spend, or None.

    SECURITY: a spend argument must be a required, non-negative number, checked by the
    schema before the policy or the budget sees it: a missing or non-numeric amount would
    count as nothing, and a negative one would lower the run's spend.
    """
    prop = (schema.get("properties") or {}).get(name)
    if not isinstance(prop, Mapping):
        return f"spend argument {name!r} is not a property of input_schema"
    if name not in (schema.get("required") or []):
        return f"spend argument {name!r} must be required in input_schema"
    types = prop.get("type")
    types = [types] if isinstance(types, str) else types
    if not types or not set(types) <= {"number", "integer"}:
        return f"spend argument {name!r} must have type number (or integer)"
    floors = [prop.get(k) for k in ("minimum", "exclusiveMinimum")]
    if not any(isinstance(f, int | float) and not isinstance(f, bool) and f >= 0
               for f in floors):
        return (f"spend argument {name!r} must not be negative: give it minimum: 0 "
                "(or exclusiveMinimum: 0)")
    return None


def spec_files(paths: Iterable[Path], suffixes: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in suffixes and f.is_file()))
        else:
            files.append(p)
    return files


def load_specs(paths: Iterable[Path], upstreams: Iterable[str] | None = None) -> SpecSet:
    """Load every spec under `paths`; `upstreams` (if given) are the names specs may use."""
    paths = list(paths)
    known = set(upstreams) if upstreams is not None else None
    errors: list[LoadError] = []
    tools: dict[str, ToolSpec] = {}
    routes: RouteTable[ToolSpec] = RouteTable()
    files = spec_files(paths, (".yaml", ".yml"))
    if not files:
        raise LoadErrors([LoadError(", ".join(map(str, paths)), None, "no tool specs found")])
    digest = hashlib.sha256()
    for file in files:
        try:
            doc = yamlfile.load(file)
        except LoadError as exc:
            errors.append(exc)
            continue
        digest.update(f"{file.name}\0{doc.text}\0".encode())
        items = doc.value if isinstance(doc.value, list) else [doc.value]
        base: tuple[int, ...]
        for i, raw in enumerate(items):
            base = (i,) if isinstance(doc.value, list) else ()
            problems = yamlfile.schema_errors(doc, raw, TOOL_SPEC_SCHEMA, base)
            if problems:
                errors.extend(problems)
                continue
            try:
                spec = _build(raw, doc, base)
            except LoadError as exc:
                errors.append(exc)
                continue
            errors += _register(spec, doc, base, known=known, tools=tools, routes=routes)
    if errors:
        raise SpecErrors(errors, tools)
    return SpecSet(tools=tools, routes=routes, revision=digest.hexdigest()[:16])


class SpecErrors(LoadErrors):
    """The specs do not load; `loaded` are the tools that did, so the policy can still be
    probed on them and one `check` reports every problem."""

    def __init__(self, errors: list[LoadError], loaded: Mapping[str, ToolSpec]) -> None:
        super().__init__(errors)
        self.loaded = loaded


def _register(spec: ToolSpec, doc: yamlfile.YamlDoc, base: tuple[int, ...], *,
              known: set[str] | None, tools: dict[str, ToolSpec],
              routes: RouteTable[ToolSpec]) -> list[LoadError]:
    """Add a compiled spec to the set; the problems that keep it out, if any."""
    errors = []
    if known is not None and spec.upstream not in known:
        errors.append(doc.error((*base, "upstream"),
                                f"upstream {spec.upstream!r} is not in the config "
                                f"(known: {', '.join(sorted(known)) or 'none'})"))
    if spec.name in tools:
        errors.append(doc.error((*base, "name"), f"duplicate tool name {spec.name!r} "
                                f"(first defined at {tools[spec.name].source})"))
        return errors
    clash = routes.add(spec.method, spec.route, spec)
    if clash is not None:
        errors.append(doc.error((*base, "route"),
                                f"route {spec.method} {spec.route.text} is already "
                                f"the route of {clash.name!r} ({clash.source})"))
        return errors
    tools[spec.name] = spec
    return errors


def _input_problem(schema: Mapping[str, Any]) -> str | None:
    if schema.get("type", "object") != "object":
        return "the arguments are one JSON object: type must be object"
    unreached = unreached_pii(schema)
    if unreached:
        # SECURITY: a mark the redaction cannot follow would leave its values in the log.
        return (f"x-pii at {unreached[0]} cannot be redacted (only fields under properties, "
                "items, local $refs and allOf/anyOf/oneOf can): declare the field there")
    return None


def _build(raw: Mapping[str, Any], doc: yamlfile.YamlDoc, base: tuple[int, ...]) -> ToolSpec:
    def fail(path: tuple[str, ...], message: str) -> LoadError:
        return doc.error((*base, *path), f"tool {raw['name']!r}: {message}")

    try:
        route = PathTemplate.parse(raw["route"]["path"])
    except ValueError as exc:
        raise fail(("route", "path"), str(exc)) from None
    if route.text.startswith(RESERVED_PREFIXES):
        raise fail(("route", "path"), f"paths under {RESERVED_PREFIXES} belong to the gateway")
    try:
        forward = PathTemplate.parse(raw.get("forward", {}).get("path", route.text))
    except ValueError as exc:
        raise fail(("forward", "path"), str(exc)) from None
    forward_headers = tuple(raw.get("forward", {}).get("headers", ()))
    for name in forward_headers:
        problem = refused_name(name)
        if problem:
            raise fail(("forward", "headers"), problem)
    missing = set(forward.names) - set(route.names)
    if missing:
        raise fail(("forward", "path"), f"uses {sorted(missing)} which the route path does "
                                        "not define")
    validators: dict[str, Validator | None] = {}
    for key in ("input_schema", "output_schema"):
        if key not in raw:
            validators[key] = None
            continue
        try:
            validators[key] = compile_schema(raw[key])
        except ValueError as exc:
            raise fail((key,), str(exc)) from None
    input_validator = validators["input_schema"]
    assert input_validator is not None  # required by TOOL_SPEC_SCHEMA
    spend = raw.get("spend")
    if spend is not None:
        problem = spend_problem(raw["input_schema"], spend)
        if problem:
            raise fail(("spend",), problem)
    problem = _input_problem(raw["input_schema"])
    if problem:
        raise fail(("input_schema",), problem)
    return ToolSpec(
        name=raw["name"], description=raw.get("description", ""), upstream=raw["upstream"],
        method=raw["route"]["method"], route=route, forward=forward,
        scopes=tuple(raw.get("scopes", [])), tier=Tier(raw.get("tier", "red")),
        idempotency=Idempotency(raw.get("idempotency", "optional")),
        input_validator=input_validator, output_validator=validators["output_schema"],
        pii_pointers=tuple(pii_pointers(raw["input_schema"])),
        arguments=frozenset(raw["input_schema"].get("properties") or {}),
        timeout_ms=raw.get("timeout_ms", 5000), mode=Mode(raw.get("mode", "enforce")),
        source=f"{doc.file}:{doc.line(base) or 1}", spend=spend,
        forward_headers=forward_headers, revision=spec_revision(raw),
    )
