"""Redaction: argument values a record must not hold (`x-pii` fields, the policy's
`redact` pointers) are replaced before the record is built."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

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
