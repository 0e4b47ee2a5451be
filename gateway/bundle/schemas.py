"""JSON Schemas of tool arguments and answers, compiled once at load.

JSON Schema 2020-12 with format checking on, and a local `referencing.Registry` that
refuses every remote `$ref`: a spec's schema may only point inside itself (`$defs`). A
`format` the checker cannot check is a load error, never a silent pass. `pii_pointers`
finds every argument marked `x-pii: true`, for redaction in the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from referencing.jsonschema import DRAFT202012

# SECURITY: an empty registry with no `retrieve`: a `$ref` to anything outside the spec
# itself is unresolvable (a load error), never fetched.
LOCAL_REGISTRY: referencing.Registry[Any] = referencing.Registry()
FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    """Check a schema and compile it; raises `ValueError` with a readable message."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"invalid JSON Schema at {where}: {exc.message}") from None
    unknown = sorted(_formats(schema) - FORMAT_CHECKER.checkers.keys())
    if unknown:
        # A format the checker does not know would silently pass anything.
        raise ValueError(f"format(s) {', '.join(unknown)} cannot be checked by this gateway")
    resolver = LOCAL_REGISTRY.resolver_with_root(DRAFT202012.create_resource(schema))
    try:
        # Resolve every $ref now, so an unresolvable one is a load error, not a 500 later.
        for ref in _refs(schema):
            resolver.lookup(ref)
    except referencing.exceptions.Unresolvable as exc:
        ref = next((r for r in _refs(schema) if r.endswith(str(exc.ref))), str(exc.ref))
        if ref.startswith("#"):
            raise ValueError(f"$ref {ref!r} points at nothing in this schema") from None
        raise ValueError(f"$ref {ref!r} cannot be resolved: a remote $ref is never fetched; "
                         "put the schema under $defs") from None
    return Draft202012Validator(schema, registry=LOCAL_REGISTRY, format_checker=FORMAT_CHECKER)


def _walk(schema: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(schema, Mapping):
        yield schema
        for value in schema.values():
            yield from _walk(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _walk(item)


def _formats(schema: Any) -> set[str]:
    return {s["format"] for s in _walk(schema) if isinstance(s.get("format"), str)}


def _refs(schema: Any) -> list[str]:
    return [s["$ref"] for s in _walk(schema) if isinstance(s.get("$ref"), str)]


def pii_pointers(schema: Mapping[str, Any], prefix: str = "",
                 root: Mapping[str, Any] | None = None, depth: int = 0) -> list[str]:
    """JSON pointers of every argument marked `x-pii: true`.

    Follows nested `properties` (whatever the `type`), `items` (as the wildcard segment
    `*`), local `$ref`s and `allOf`/`anyOf`/`oneOf`, so a marked field is found however the
    schema reaches it.
    """
    root = schema if root is None else root
    if depth > 32:  # a recursive $ref; deeper values are not marked
        return []
    out: list[str] = []
    for pointer, sub in _children(schema, prefix, root):
        if sub.get("x-pii") is True and pointer:
            out.append(pointer)
        else:
            out += pii_pointers(sub, pointer, root, depth + 1)
    return sorted(set(out))


def _children(schema: Mapping[str, Any], prefix: str,
              root: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """The subschemas that describe `prefix` itself or a value below it."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            target = target.get(key) if isinstance(target, Mapping) else None
        if isinstance(target, Mapping):
            yield prefix, target
    for key in ("allOf", "anyOf", "oneOf"):
        yield from ((prefix, sub) for sub in schema.get(key) or () if isinstance(sub, Mapping))
    if isinstance(schema.get("items"), Mapping):
        yield f"{prefix}/*", schema["items"]
    for name, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, Mapping):
            yield f"{prefix}/{name.replace('~', '~0').replace('/', '~1')}", sub
