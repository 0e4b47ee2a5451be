"""ECMA-262 regular expressions for JSON Schema: `pattern`, `patternProperties`, and the
`regex` format.

JSON Schema's patterns are ECMA-262 regular expressions; Python's `re` is not one. With
`re.search`, `^C[0-9]+$` accepts `"C1\\n"` (`$` matches before a final newline), so an
argument the schema's author meant to refuse reached the policy and the upstream. These
keywords run on regress (Rust's ECMA-262 engine, in unicode mode as JSON Schema 2020-12
recommends) instead, and a pattern that is not a valid ECMA-262 regex is a load error.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import regress
from jsonschema.exceptions import ValidationError

FLAGS = "u"


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> regress.Regex:
    """A spec's pattern, compiled once (patterns come from specs, so the set is bounded)."""
    return regress.Regex(pattern, flags=FLAGS)


def search(pattern: str, text: str) -> bool:
    return compiled(pattern).find(text) is not None


def problem(pattern: str) -> str | None:
    """Why `pattern` is not an ECMA-262 regular expression, or None."""
    try:
        regress.Regex(pattern, flags=FLAGS)
    except regress.RegressError as exc:
        return str(exc) or "invalid regular expression"
    return None


def is_regex(instance: object) -> bool:
    """The `regex` format: a string that is an ECMA-262 regular expression."""
    return not isinstance(instance, str) or problem(instance) is None


# `validator` is jsonschema's validator instance; `descend` is not in its typed protocol.
def pattern(validator: Any, patrn: str, instance: Any,
            schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                       schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for name, value in instance.items():
            if search(patrn, name):
                yield from validator.descend(value, subschema, path=name,
                                             schema_path=patrn)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [name for name in instance if name not in properties
            and not any(search(p, name) for p in patterns)]


def additional_properties(validator: Any, additional: Any, instance: Any,
                          schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        names = ", ".join(repr(e) for e in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({names} "
                              f"{'was' if len(extras) == 1 else 'were'} unexpected)")


KEYWORDS = {"pattern": pattern, "patternProperties": pattern_properties,
            "additionalProperties": additional_properties}
