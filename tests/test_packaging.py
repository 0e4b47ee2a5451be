"""The supply chain: the image's lock covers every runtime dependency within its range,
with hashes, and the build backend is pinned and locked too."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from requirements.lock."""
    out: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    for block in re.split(r"\n(?=[a-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block)
        if m:
            out[canonicalize_name(m.group(1))] = (m.group(2),
                                                  re.findall(r"--hash=sha256:(\w+)", block))
    return out


def test_every_runtime_dependency_is_locked_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lock = locked()
    for spec in project["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in requirements.lock: regenerate it"
        version, hashes = lock[name]
        assert req.specifier.contains(version, prereleases=True), (req, version)
        assert hashes, f"{req.name} has no hash"
    assert all(hashes for _, hashes in lock.values())


def test_the_build_backend_is_pinned_and_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lock = locked()
    for spec in project["build-system"]["requires"]:
        req = Requirement(spec)
        [clause] = list(req.specifier)
        assert clause.operator == "==", f"{spec}: the build backend is pinned exactly"
        assert lock[canonicalize_name(req.name)][0] == clause.version


def test_every_gateway_package_is_listed_for_the_wheel() -> None:
    """pyproject.toml lists the packages (the shipped specs and policies are mapped in, and
    setuptools cannot mix that with `find`): a package missing there is missing from the
    wheel and the image, while an editable install would still import it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "gateway").rglob("__init__.py")}
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"] == {"gateway._shipped.tool_specs": "tool_specs",
                                         "gateway._shipped.policies": "policies"}
    assert listed - found == set(setuptools["package-dir"])
    assert "py.typed" in setuptools["package-data"]["gateway"]
