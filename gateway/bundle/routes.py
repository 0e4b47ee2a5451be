"""The route table: which tool a `METHOD /path` is, and its path parameters.

Matching works on the *raw* (still percent-encoded) path, one segment at a time, so the
path tricks of DESIGN §3 cannot select a tool or reach an upstream path no spec declares:
- an empty segment (`//`) or a dot segment never matches a literal;
- a literal matches only its exact raw text, so `%2e%2e` or `%2F` is never a literal;
- a parameter is decoded once and refused if it decodes to `.`/`..` or holds `/`, `\\` or a
  control character (400 `invalid_arguments`).
The upstream path is built from the spec's `forward.path`, never from the incoming path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote, unquote

from gateway.core.errors import InvalidArguments

T = TypeVar("T")

PARAM = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
# Literal path segments a spec may declare: unreserved characters only, so the raw form
# and the decoded form of a literal are the same text.
LITERAL = re.compile(r"^[A-Za-z0-9._~-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1, line separators


@dataclass(frozen=True)
class PathTemplate:
    """`/billing/orders/{order_id}` parsed into literal segments and parameter names."""

    text: str
    segments: tuple[str, ...]      # literal text, or "" for a parameter
    params: tuple[str | None, ...]  # parameter name per segment, None for a literal

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        if not text.startswith("/"):
            raise ValueError(f"path {text!r} must start with '/'")
        parts = text[1:].split("/") if text != "/" else []
        segments: list[str] = []
        params: list[str | None] = []
        for part in parts:
            m = PARAM.match(part)
            if m:
                if m.group(1) in params:
                    raise ValueError(f"path {text!r} names parameter {m.group(1)!r} twice")
                segments.append("")
                params.append(m.group(1))
            elif LITERAL.match(part) and part not in (".", ".."):
                segments.append(part)
                params.append(None)
            else:
                raise ValueError(f"path {text!r}: segment {part!r} is neither a literal "
                                 "([A-Za-z0-9._~-]+) nor a {parameter}")
        return cls(text, tuple(segments), tuple(params))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p is not None)

    @property
    def shape(self) -> tuple[str, ...]:
        return tuple(s if p is None else "{}" for s, p in zip(self.segments, self.params,
                                                             strict=True))

    def render(self, values: dict[str, str]) -> str:
        """Build a raw path, each parameter percent-encoded as exactly one segment."""
        out = []
        for seg, name in zip(self.segments, self.params, strict=True):
            out.append(seg if name is None else quote(values[name], safe=""))
        return "/" + "/".join(out)


@dataclass
class _Node(Generic[T]):
    literals: dict[str, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    targets: dict[str, T] = field(default_factory=dict)  # by HTTP method


class RouteTable(Generic[T]):
    """A trie of path segments; at each level a literal beats a parameter."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()

    def add(self, method: str, template: PathTemplate, target: T) -> T | None:
        """Add a route; returns the target already there for the same shape, if any."""
        node = self._root
        for seg, name in zip(template.segments, template.params, strict=True):
            if name is None:
                node = node.literals.setdefault(seg, _Node())
            else:
                if node.param is None:
                    node.param = _Node()
                node = node.param
        existing = node.targets.get(method)
        if existing is None:
            node.targets[method] = target
        return existing

    def match(self, method: str, raw_path: str) -> tuple[T, list[str]] | None:
        """The target and the raw parameter segments, or None when nothing is declared."""
        if not raw_path.startswith("/"):
            return None
        parts = raw_path[1:].split("/") if raw_path != "/" else []
        return self._match(self._root, parts, 0, method, [])

    def _match(self, node: _Node[T], parts: list[str], i: int, method: str,
               raw_params: list[str]) -> tuple[T, list[str]] | None:
        if i == len(parts):
            target = node.targets.get(method)
            return (target, list(raw_params)) if target is not None else None
        part = parts[i]
        child = node.literals.get(part)
        if child is not None:
            found = self._match(child, parts, i + 1, method, raw_params)
            if found is not None:
                return found
        # SECURITY: an empty segment never binds a parameter (`//` is not a value).
        if node.param is not None and part:
            raw_params.append(part)
            found = self._match(node.param, parts, i + 1, method, raw_params)
            raw_params.pop()
            return found
        return None


def decode_params(template: PathTemplate, raw_values: list[str]) -> dict[str, str]:
    """Decode raw parameter segments; refuse values that could change the upstream path."""
    values = {}
    for name, raw in zip(template.names, raw_values, strict=True):
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise InvalidArguments(f"path parameter {name!r} is not valid UTF-8") from None
        # SECURITY: a parameter is one path segment; anything that could address another
        # segment or confuse a server's path handling is refused before any stage runs.
        if value in (".", "..") or "/" in value or "\\" in value or _CONTROL.search(value):
            raise InvalidArguments(f"path parameter {name!r} is not a single path segment",
                                   details=[{"path": f"/{name}",
                                             "message": "must not be '.', '..' or contain "
                                                        "'/', '\\' or control characters"}])
        values[name] = value
    return values
