"""The policy sources every engine loads.

Sources are the `.rego` modules and the OPA-style data files (`data.json` / `data.yaml`) under
the configured policy paths. As in OPA, a data file's directory, relative to the policy
path it was found under, is where its content is mounted in `data` (a `data.yaml` at the
root is merged at `data` itself). The revision is a SHA-256 over every source, so the audit
record says exactly which policy decided.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.core.errors import LoadError, LoadErrors

DATA_FILES = ("data.json", "data.yaml", "data.yml")


@dataclass(frozen=True)
class PolicySources:
    modules: tuple[tuple[str, str], ...]   # (file name, Rego text)
    data: Mapping[str, Any]
    revision: str

    @property
    def data_json(self) -> str:
        return json.dumps(self.data, sort_keys=True)


def load_sources(paths: Iterable[Path], *, tests: bool = False) -> PolicySources:
    """Read every policy source under `paths`; `*_test.rego` only when `tests` is true."""
    paths = list(paths)
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    errors: list[LoadError] = []
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for file in files:
            if not file.is_file():
                continue
            if file.suffix == ".rego" and (tests or not file.name.endswith("_test.rego")):
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    errors.append(LoadError(str(file), None, f"cannot read: {exc}"))
                    continue
                modules.append((str(file), text))
                digest.update(f"{file.name}\0{text}\0".encode())
            elif file.name in DATA_FILES:
                prefix = file.parent.relative_to(root).parts if root.is_dir() else ()
                try:
                    text = file.read_text(encoding="utf-8")
                    value = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
                except (OSError, ValueError, yaml.YAMLError) as exc:
                    mark = getattr(exc, "problem_mark", None)
                    line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
                    errors.append(LoadError(str(file), line, f"invalid data file: {exc}"))
                    continue
                if not isinstance(value, dict):
                    errors.append(LoadError(str(file), None, "a data file must hold an object"))
                    continue
                try:
                    _merge(data, prefix, value)
                except (ValueError, TypeError) as exc:
                    errors.append(LoadError(str(file), None, str(exc)))
                digest.update(f"{'/'.join(prefix)}\0{text}\0".encode())
    if not modules and not errors:
        errors.append(LoadError(", ".join(map(str, paths)), None, "no .rego policy found"))
    if errors:
        raise LoadErrors(errors)
    return PolicySources(tuple(modules), data, digest.hexdigest()[:16])


def _merge(data: dict[str, Any], prefix: tuple[str, ...], value: dict[str, Any]) -> None:
    node = data
    for depth, key in enumerate(prefix):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise TypeError(f"data key {'.'.join(prefix[:depth + 1])} is not an object, so "
                             "this file cannot be mounted below it")
    for key, item in value.items():
        if key in node and not (isinstance(node[key], dict) and isinstance(item, dict)):
            raise ValueError(f"data key {'.'.join((*prefix, key))} is defined twice")
        if isinstance(item, dict) and isinstance(node.get(key), dict):
            _merge(node, (key,), item)
        else:
            node[key] = item
