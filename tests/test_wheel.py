"""The wheel a user installs, built from a clean copy of this repository with the pinned
build backend: it holds the package with py.typed, the shipped tool specs and policies and
the example upstream, nothing of tests/; and `toolgate demo` runs from it, installed in a
fresh virtualenv, started outside any checkout. The sdist builds the same wheel."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.test_demo import check_transcript

BUILD_TIMEOUT = 600  # an isolated build installs the backend first
# The first test also builds the wheel and the virtualenv (module fixtures).
pytestmark = pytest.mark.timeout(900)


def clean_copy(repo_root: Path, dest: Path) -> Path:
    """What a clone of this working tree holds: the tracked files and the untracked ones
    git does not ignore (no build/, *.egg-info, state or keys of a developer's tree)."""
    git = shutil.which("git")
    assert git, "git is needed to know which files a clone holds"
    listed = subprocess.run([git, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=repo_root, check=True,
                            capture_output=True, timeout=60).stdout
    for name in filter(None, listed.split(b"\0")):
        src = repo_root / os.fsdecode(name)
        if src.is_file():  # a tracked file deleted in the working tree is not in it
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def pip_wheel(source: Path, dist: Path, repo_root: Path) -> Path:
    """`pip wheel --no-deps` of `source` with the backend pyproject.toml pins: this
    environment's when it has exactly those versions (offline), else pip's isolated
    build environment, which installs them from the configured index."""
    pinned = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [r.split("==") for r in pinned["build-system"]["requires"]]
    here = all(_version(name) == version for name, version in wanted)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
           *(["--no-build-isolation"] if here else []), "-w", str(dist), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = dist.glob("toolgate-*.whl")
    return wheel


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return clean_copy(repo_root, tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return pip_wheel(source, tmp_path_factory.mktemp("dist"), repo_root)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel installed by pip, the ordinary way. Its dependencies
    are this environment's: a .pth line puts this interpreter's site-packages after the
    venv's own, so the wheel's `gateway` comes first and nothing is downloaded. (A .pth in
    a directory added that way is not run: an editable toolgate here stays invisible.)"""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True, timeout=60).stdout.strip())
    ours = sysconfig.get_paths()
    (site / "zz_test_dependencies.pth").write_text(
        "\n".join(dict.fromkeys([ours["purelib"], ours["platlib"]])) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "--no-cache-dir", str(wheel)],
                   check=True, capture_output=True, timeout=BUILD_TIMEOUT)
    return venv


def test_the_wheel_holds_the_package_the_shipped_files_and_no_tests(
        wheel: Path, source: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert len(dist_info) == 1
    assert {n.split("/")[0] for n in names} == {"gateway", *dist_info}  # no tests/, no data/
    assert "gateway/py.typed" in names
    modules = {p.relative_to(source).as_posix() for p in (source / "gateway").rglob("*.py")}
    assert modules - names == set(), "a module is missing: list its package in pyproject.toml"
    assert {"gateway/example_upstream.py", "gateway/cli/example.py", "gateway/demo.py"} <= names
    for shipped in ("tool_specs", "policies"):
        files = {f"gateway/_shipped/{shipped}/{p.relative_to(source / shipped).as_posix()}"
                 for p in (source / shipped).rglob("*") if p.is_file()}
        assert files
        assert {n for n in names if n.startswith(f"gateway/_shipped/{shipped}/")} == files
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"^toolgate = gateway\.cli\.main:main$", text, re.MULTILINE)


def test_the_demo_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOOLGATE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([venv / "bin" / "python", "-c", "import gateway; "
                            "print(gateway.__file__)"], cwd=tmp_path, env=env, check=True,
                           capture_output=True, text=True, timeout=60).stdout.strip()
    site = Path(where).parent.parent
    assert site.is_relative_to(venv), where
    result = subprocess.run([venv / "bin" / "toolgate", "demo", "--dir", str(tmp_path / "demo")],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    check_transcript(result.stdout, tmp_path / "demo")
    # It ran on the packaged copies, not on some checkout's.
    config = yaml.safe_load((tmp_path / "demo" / "toolgate.yaml").read_text(encoding="utf-8"))
    assert config["tool_specs"] == [str(site / "gateway" / "_shipped" / "tool_specs")]
    assert config["policies"] == [str(site / "gateway" / "_shipped" / "policies")]


def test_the_sdist_builds_the_same_wheel(source: Path, wheel: Path, repo_root: Path,
                                         tmp_path: Path) -> None:
    # `build` (a dev extra) makes the sdist. Imported, not importorskip'd: without it this
    # test fails, so CI can never pass by silently skipping it.
    import build  # noqa: F401, PLC0415
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir",
                             str(tmp_path / "sdist"), str(source)], capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [sdist] = (tmp_path / "sdist").glob("toolgate-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert not any(m.startswith("tests") for m in members)
    assert {"tool_specs/create_refund_request.yaml", "policies/toolgate.rego"} <= members
    again = pip_wheel(sdist, tmp_path / "dist", repo_root)
    assert sorted(zipfile.ZipFile(again).namelist()) == sorted(zipfile.ZipFile(wheel).namelist())
