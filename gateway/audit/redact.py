"""Redaction: argument values a record must not hold (`x-pii` fields, the policy's
`redact` pointers) are replaced before the record is built; arguments that never passed
the schema are kept only in outline.

A `Redactor` writes each redacted value in one of two ways (`audit.redaction`): the mask
`[REDACTED]`, or a keyed hash `hmac:<32 hex>` — HMAC-SHA256 under the redaction key of the
value's canonical JSON, so one value gives one token in every record, across restarts, and
an auditor can see that two calls named the same customer without seeing who. A value at a
redacted pointer is replaced whole: an object or an array becomes one token.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import orjson

from gateway.audit.settings import AuditSettings, Redaction, redaction_key

REDACTED = "[REDACTED]"
HASH_PREFIX = "hmac:"
HASH_HEX = 32          # hex characters of the HMAC kept in a token (128 bits)
WHOLE = ""             # the JSON pointer of the whole document (RFC 6901)
_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")  # a JSON-pointer array index, ASCII digits only


def canonical(value: Any) -> bytes:
    """The bytes a value is hashed over: JSON with sorted keys, no whitespace. A value orjson
    cannot write (an integer past 64 bits, a lone surrogate) takes the standard library's
    encoding, so it still hashes, and always to the same token."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


class Redactor:
    """Replaces the values at JSON pointers with the mask or, given a key, a keyed hash."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: AuditSettings, environ: Mapping[str, str]) -> Redactor:
        """The redactor `audit.redaction` asks for. Raises `AuditKeyError` when the hash's
        key cannot be read or is too short."""
        return cls(redaction_key(settings, environ))

    @property
    def mode(self) -> Redaction:
        return Redaction.MASK if self._key is None else Redaction.HASH

    def token(self, value: Any) -> str:
        """What a redacted value is written as."""
        if self._key is None:
            return REDACTED
        # SECURITY: keyed, so nobody without the key can test a guess (an e-mail address, a
        # card number) against a token; truncated to 128 bits, still far from collisions.
        digest = hmac.new(self._key, canonical(value), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:HASH_HEX]

    def redact(self, args: Any, pointers: Iterable[str]) -> Any:
        """A copy of `args` with the value at each JSON pointer replaced by its token."""
        return self.apply(args, pointers)[0]

    def apply(self, args: Any, pointers: Iterable[str]) -> tuple[Any, list[str]]:
        """A copy of `args` with the value at each JSON pointer replaced by its token, and
        the pointers of the values replaced (sorted, each naming one value, no `*`).

        The segment `*` matches every element of a list (or every member of an object), so
        `/items/*/card` redacts the card of each item. The pointer `""` is the whole
        document. A pointer that names nothing is ignored. `args` is never changed.
        """
        pointers = list(pointers)
        if not pointers or not isinstance(args, dict):
            return args, []
        if WHOLE in pointers:
            return self.token(args), [WHOLE]
        out = _copy(args)
        replaced: set[str] = set()
        # Shallow pointers first: a value is tokenized whole, before any part of it is, so
        # its token never depends on the order the pointers came in.
        for pointer in sorted(set(pointers), key=lambda p: (p.count("/"), p)):
            parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
            if parts:
                _redact(out, parts, "", replaced, self.token)
        return out, sorted(replaced)


MASK = Redactor()


def redact(args: Any, pointers: Iterable[str]) -> Any:
    """`args` with the value at each JSON pointer replaced by `[REDACTED]` (the mask)."""
    return MASK.redact(args, pointers)


def _copy(value: Any) -> Any:
    """A deep copy of JSON: orjson's round trip, several times faster than `deepcopy` (on
    every call that redacts); `deepcopy` for what orjson cannot write."""
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return copy.deepcopy(value)


def _redact(node: Any, parts: list[str], at: str, replaced: set[str],
            token: Callable[[Any], str]) -> None:
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
        where = f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"
        if rest:
            _redact(child, rest, where, replaced, token)
        elif where not in replaced:   # two pointers naming one value: one token
            node[key] = token(child)
            replaced.add(where)


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
