"""Stage `validate`: the arguments against the tool's `input_schema` (JSON Schema 2020-12).

Reads: the call's arguments, the compiled validator (formats checked, no remote `$ref`).
Refuses: 422 `schema_invalid` with `details: [{path, message, keyword}]`, one per failed
keyword, JSON-pointer paths, sorted, at most `MAX_DETAILS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from jsonschema.exceptions import ValidationError

from gateway.core.context import CallContext
from gateway.core.errors import SchemaInvalid

if TYPE_CHECKING:
    from gateway.runtime import Runtime

MAX_DETAILS = 20


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def details(errors: Iterable[ValidationError]) -> list[dict[str, str]]:
    """One detail per failing argument; `required` and `additionalProperties` point at the
    property concerned rather than at the object that holds it."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for e in errors:
        base = _pointer(e.absolute_path)
        keyword = str(e.validator)
        if keyword == "required" and isinstance(e.instance, dict):
            for name in e.validator_value if isinstance(e.validator_value, list) else ():
                if name not in e.instance:
                    out.setdefault((f"{base}/{name}", keyword), {
                        "path": _pointer([*e.absolute_path, name]),
                        "message": f"{name!r} is required", "keyword": keyword})
        elif keyword == "additionalProperties" and isinstance(e.instance, dict):
            declared = e.schema.get("properties", {}) if isinstance(e.schema, dict) else {}
            for name in sorted(set(e.instance) - set(declared)):
                out.setdefault((f"{base}/{name}", keyword), {
                    "path": _pointer([*e.absolute_path, name]),
                    "message": f"{name!r} is not an argument of this tool",
                    "keyword": keyword})
        else:
            out.setdefault((base, keyword), {"path": base or "/", "message": e.message,
                                             "keyword": keyword})
    return sorted(out.values(), key=lambda d: (d["path"], d["keyword"]))[:MAX_DETAILS]


async def validate(ctx: CallContext, rt: Runtime) -> None:
    spec = ctx.call.spec
    errors = list(spec.input_validator.iter_errors(dict(ctx.call.args)))
    rt.metrics.schema.labels(spec.name, "invalid" if errors else "valid").inc()
    if errors:
        raise SchemaInvalid(f"the arguments do not match the schema of tool {spec.name}",
                            details=details(errors))
    ctx.args_valid = True
