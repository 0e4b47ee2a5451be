"""JSON with exactly one meaning, for bodies the gateway judges and then forwards as bytes.

SECURITY: the upstream receives the raw bytes, so the gateway must see exactly one meaning
in them. With `{"amount": 5000, "amount": 10}` a parser that keeps the last value would let
the policy approve 10 while an upstream that keeps the first refunds 5000; such a body is
refused, as are the non-JSON constants some parsers accept and others reject.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from gateway.core.errors import InvalidJson, quote

MAX_INT_DIGITS = 20  # 2**64 has 20 digits; orjson refuses what does not fit 64 bits
# Arguments nest at most this deep. The policy input and the audit record wrap them in a few
# more levels, and orjson writes at most 254: a body just under that was decided but could
# not be recorded (a 500). Tool arguments need a handful of levels, not hundreds.
MAX_DEPTH = 64


class _Ambiguous(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _Ambiguous(f"the name {quote(name)} is given twice in one object")
        out[name] = value
    return out


def _constant(name: str) -> Any:
    raise _Ambiguous(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Ambiguous("a number is too large for a double")
    return value


def _int(text: str) -> int:
    # Python refuses to convert more than 4300 digits (a ValueError, not a JSON error), and
    # an integer past 64 bits is read differently by other parsers anyway.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Ambiguous(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def loads_strict(body: str | bytes) -> Any:
    """JSON with one meaning: no repeated names, no NaN/Infinity, no number that parsers
    round differently (beyond a double, or an integer beyond 64 bits), nothing the audit
    log could not write (a lone surrogate, nesting deeper than `MAX_DEPTH`)."""
    value = json.loads(body, object_pairs_hook=_object, parse_constant=_constant,
                       parse_float=_float, parse_int=_int)
    if _too_deep(value):
        raise _Ambiguous(f"the body nests deeper than {MAX_DEPTH} levels")
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        raise _Ambiguous("the body holds an integer beyond 64 bits or an unpaired "
                         "surrogate") from None
    return value


def _too_deep(value: Any) -> bool:
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [child for node in level if isinstance(node, dict | list)
                 for child in (node.values() if isinstance(node, dict) else node)]
        if not level:
            return False
    return any(isinstance(node, dict | list) for node in level)


def arguments(body: bytes) -> dict[str, Any]:
    """The JSON object of a body (`{}` when empty); 400 `invalid_json` otherwise.

    SECURITY: only UTF-8 without a byte-order mark is JSON here (RFC 8259 §8.1). Python's
    parser also reads UTF-16 and UTF-32, which an approver would be shown as garbage while
    the gateway judged a meaning in them.
    """
    if not body.strip():
        return {}
    if body.startswith(b"\xef\xbb\xbf"):
        raise InvalidJson("the body starts with a byte-order mark; send UTF-8 without one")
    try:
        value = loads_strict(body.decode("utf-8"))
    except _Ambiguous as exc:
        raise InvalidJson(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc.msg} at position {exc.pos}") \
            from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidJson("the body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise InvalidJson("the body must be a JSON object of arguments")
    return value
