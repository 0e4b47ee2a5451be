"""JSON Schemas of tool arguments and answers, compiled once at load.

JSON Schema 2020-12 with format checking on, and a local `referencing.Registry` that
refuses every remote `$ref`: a spec's schema may only point inside itself (`$defs`). A
`format` the checker cannot check is a load error, never a silent pass. Patterns are
ECMA-262 regular expressions, as the standard says (`gateway.bundle.patterns`), and
`email`/`idn-email` are checked as addresses (email-validator), not for an `@`.
`pii_pointers` finds every argument marked `x-pii: true`, for redaction in the audit log.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, cast

import referencing
import referencing.exceptions
from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing.jsonschema import DRAFT202012

from gateway.bundle import patterns

# SECURITY: an empty registry with no `retrieve`: a `$ref` to anything outside the spec
# itself is unresolvable (a load error), never fetched.
LOCAL_REGISTRY: referencing.Registry[Any] = referencing.Registry()

def _email(instance: object) -> bool:
    if isinstance(instance, str):  # RFC 5321: ASCII addresses
        validate_email(instance, check_deliverability=False, allow_smtputf8=False)
    return True


def _idn_email(instance: object) -> bool:
    if isinstance(instance, str):  # RFC 6531: internationalized addresses
        validate_email(instance, check_deliverability=False, allow_smtputf8=True)
    return True


# Draft 2020-12 with ECMA-262 patterns (jsonschema's `extend` is untyped, hence the cast).
SchemaValidator = cast("type[Validator]", validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, patterns.KEYWORDS))
# Its own format checker: the library's shared one stays as it is.
FORMAT_CHECKER = copy.copy(Draft202012Validator.FORMAT_CHECKER)
FORMAT_CHECKER.checkers = {**FORMAT_CHECKER.checkers,
                           "regex": (patterns.is_regex, ()),
                           "email": (_email, EmailNotValidError),
                           "idn-email": (_idn_email, EmailNotValidError)}
_META = SchemaValidator(SchemaValidator.META_SCHEMA, format_checker=FORMAT_CHECKER)


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    """Check a schema and compile it; raises `ValueError` with a readable message."""
    # The metaschema, with this checker: a pattern must be an ECMA-262 regex, not Python's.
    problem = best_match(_META.iter_errors(schema))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "(root)"
        raise ValueError(f"invalid JSON Schema at {where}: {problem.message}") from None
    if any("unevaluatedProperties" in s for s in _walk(schema)) and any(
            "patternProperties" in s for s in _walk(schema)):
        # Its evaluation would match patterns with Python's `re`, not ECMA-262.
        raise ValueError("unevaluatedProperties cannot be combined with patternProperties "
                         "here; use additionalProperties")
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
    return SchemaValidator(schema, registry=LOCAL_REGISTRY, format_checker=FORMAT_CHECKER)


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
                 root: Mapping[str, Any] | None = None, depth: int = 0,
                 reached: set[int] | None = None) -> list[str]:
    """JSON pointers of every argument marked `x-pii: true`.

    Follows nested `properties` (whatever the `type`), `items` (as the wildcard segment
    `*`), local `$ref`s and `allOf`/`anyOf`/`oneOf`, so a marked field is found however the
    schema reaches it. `reached` collects the marked subschemas found (`unreached_pii`).
    """
    root = schema if root is None else root
    if depth > 32:  # a recursive $ref; deeper values are not marked
        return []
    out: list[str] = []
    for pointer, sub in _children(schema, prefix, root):
        if sub.get("x-pii") is True and pointer:
            out.append(pointer)
            if reached is not None:
                reached.add(id(sub))
        else:
            out += pii_pointers(sub, pointer, root, depth + 1, reached)
    return sorted(set(out))


def unreached_pii(schema: Mapping[str, Any]) -> list[str]:
    """Where in the schema an `x-pii: true` mark sits that `pii_pointers` cannot turn into
    a pointer to a value (under `additionalProperties`, `patternProperties`,
    `prefixItems`, `if`/`then`, `not`, an unused definition…): its values would be written
    unredacted, so a spec holding one is refused."""
    reached: set[int] = set()
    pii_pointers(schema, reached=reached)
    return [path for path, node in _nodes(schema, "")
            if node.get("x-pii") is True and path and id(node) not in reached]


def _nodes(schema: Any, path: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if isinstance(schema, Mapping):
        yield path, schema
        for key, value in schema.items():
            yield from _nodes(value, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(schema, list):
        for n, item in enumerate(schema):
            yield from _nodes(item, f"{path}/{n}")


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
