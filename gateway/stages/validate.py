"""Stage `validate`: the arguments against the tool's `input_schema` (JSON Schema 2020-12).

Reads: `ctx.args`, the compiled validator (formats checked, no remote `$ref`). Refuses: 422
`schema_invalid` with `details: [{path, message}]`, one per failed keyword, JSON-pointer
paths, sorted, at most `MAX_DETAILS`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.context import CallContext, Runtime
from gateway.errors import SchemaInvalid

MAX_DETAILS = 20


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


async def validate(ctx: CallContext, rt: Runtime) -> None:
    assert ctx.spec is not None and ctx.args is not None
    errors = sorted(ctx.spec.input_validator.iter_errors(ctx.args),
                    key=lambda e: (_pointer(e.absolute_path), str(e.message)))
    if errors:
        details = [{"path": _pointer(e.absolute_path) or "/", "message": e.message,
                    "keyword": str(e.validator)} for e in errors[:MAX_DETAILS]]
        raise SchemaInvalid(f"the arguments do not match the schema of tool {ctx.spec.name}",
                            details=details)
