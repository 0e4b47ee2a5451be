"""Redaction: argument values a record must not hold (`x-pii` fields, the policy's
`redact` pointers) are replaced before the record is built; arguments that never passed
the schema are kept only in outline."""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson

REDACTED = "[REDACTED]"
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")  # a JSON-pointer array index, ASCII digits only


def redact(args: Any, pointers: Iterable[str]) -> Any:
    """A copy of `args` with the value at each JSON pointer replaced by `[REDACTED]`.

    The segment `*` matches every element of a list (or every member of an object), so
    `/items/*/card` redacts the card of each item.
    """
    pointers = list(pointers)
    if not pointers or not isinstance(args, dict):
        return args
    out = copy.deepcopy(args)
    for pointer in pointers:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        if parts:
            _redact(out, parts)
    return out


def _redact(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        children = (list(enumerate(node)) if isinstance(node, list)
                    else list(node.items()) if isinstance(node, dict) else [])
    elif isinstance(node, dict) and head in node:
        children = [(head, node[head])]
    elif isinstance(node, list) and _INDEX.match(head) and int(head) < len(node):
        children = [(int(head), node[int(head)])]
    else:
        return
    for key, child in children:
        if rest:
            _redact(child, rest)
        else:
            node[key] = REDACTED


def outline(args: Mapping[str, Any], declared: Collection[str]) -> dict[str, Any]:
    """What a record keeps of arguments that did not pass the tool's schema: each declared
    argument present, with its JSON type and encoded size, and how many other names there
    were. No value and no undeclared name is kept: both are the agent's to choose, and a
    refused call's record must stay as small as the spec, whatever the body was."""
    present = {name: {"type": _json_type(args[name]), "bytes": _size(args[name])}
               for name in sorted(declared) if name in args}
    return {"declared": present, "undeclared": sum(1 for name in args if name not in declared)}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except TypeError:   # an integer past 64 bits, which orjson does not write
        return len(str(value)) if isinstance(value, int) else -1
