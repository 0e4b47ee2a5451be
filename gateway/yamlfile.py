"""YAML files that remember where each value came from.

Config and tool specs are written by people; an error must say `file:line`. PyYAML's safe
loader gives values without positions and silently keeps the last of two equal keys, so we
compose the node tree once, build plain values from it, and record the line of every path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from gateway.core.errors import LoadError

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDoc:
    """A loaded document: its value and the 1-based line of every path in it."""

    file: str
    value: Any
    lines: Mapping[JsonPath, int]
    text: str = ""                 # the source, for revisions

    def line(self, path: Iterable[str | int]) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def error(self, path: Iterable[str | int], message: str) -> LoadError:
        return LoadError(self.file, self.line(path), message)


def load(path: Path) -> YamlDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadError(str(path), None, f"cannot read: {exc.strerror}") from exc
    return loads(text, str(path))


def loads(text: str, file: str) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise LoadError(file, line, f"invalid YAML: {exc.problem}") from exc
    lines: dict[JsonPath, int] = {}
    if node is None:
        return YamlDoc(file, None, lines, text)
    value = _Builder(file, lines).build(node, ())
    return YamlDoc(file, value, lines, text)


MAX_NODES = 100_000  # alias expansion ("billion laughs") stops here
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Builder:
    """Plain values from a node tree, refusing what a config file never needs: recursive
    aliases, runaway alias expansion, and tags on mappings or sequences."""

    def __init__(self, file: str, lines: dict[JsonPath, int]) -> None:
        self.file = file
        self.lines = lines
        self.active: set[int] = set()
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> LoadError:
        return LoadError(self.file, node.start_mark.line + 1, message)

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"more than {MAX_NODES} values (alias expansion?)")
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if node.tag not in (_MAP, _SEQ):
                raise self.fail(node, f"unsupported tag {node.tag}")
            if id(node) in self.active:
                raise self.fail(node, "recursive alias")
            self.active.add(id(node))
            try:
                return self._mapping(node, path) if isinstance(node, yaml.MappingNode) else [
                    self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            finally:
                self.active.discard(id(node))
        return _scalar(node, self.file)

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, self.file)
            if not isinstance(key, str):
                raise self.fail(key_node, f"key {key!r} is not a string")
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r}")
            out[key] = self.build(value_node, (*path, key))
            self.lines[(*path, key)] = key_node.start_mark.line + 1
        return out


def _scalar(node: yaml.Node, file: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise LoadError(file, node.start_mark.line + 1, "a key must be a plain value")
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise LoadError(file, node.start_mark.line + 1, f"invalid value: {exc.problem}") from exc
    finally:
        loader.dispose()


def schema_errors(doc: YamlDoc, value: Any, schema: Mapping[str, Any],
                  base: JsonPath = ()) -> list[LoadError]:
    """Validate `value` (found at `base` in `doc`) against a JSON Schema; errors carry lines.

    An unknown key is reported at the key's own line, one error per key.
    """
    validator = Draft202012Validator(schema)
    errors = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        path = (*base, *err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = err.schema.get("properties", {})
            for key in sorted(set(err.instance) - set(known)):
                where = _dotted((*path, key))
                errors.append(doc.error((*path, key), f"{where}: unknown key {key!r}"))
            continue
        errors.append(doc.error(path, f"{_dotted(path)}: {err.message}"))
    return errors


def _dotted(path: JsonPath) -> str:
    return ".".join(str(p) for p in path) or "(top level)"
