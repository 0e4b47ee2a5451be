"""`gateway.metrics`: beside the gateway's own series, `/metrics` has the build's versions
and prometheus_client's process and Python collectors — for one process as prometheus_client
gives them, and for every process of a `--workers` run (`RunProcesses`), read from the real
`/proc` of real processes. The scrape of a running `toolgate serve` (one process and
`--workers 2`) is in tests/e2e/test_drain.py."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway import __version__
from gateway.metrics import Metrics, RunProcesses, register_process

SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.M)


def samples(text: str) -> dict[tuple[str, str], float]:
    return {(name, labels or ""): float(value) for name, labels, value in SAMPLE.findall(text)}


@pytest.fixture
def sleeper() -> Iterator[int]:
    """Another live process of this user, standing for a second worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_one_process_has_the_process_python_and_build_series() -> None:
    found = samples(Metrics().exposition().decode())
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds"):
        assert found[(name, "")] > 0, name
    gc = [key for key in found if key[0] == "python_gc_collections_total"]
    assert len(gc) == 3, "one per generation"
    version = platform.python_version()
    assert next(k for k in found if k[0] == "python_info")[1].endswith(f'version="{version}"')
    assert found[("toolgate_build_info", f'aiohttp="{aiohttp.__version__}",python="{version}",'
                  f'uvloop="{metadata.version("uvloop")}",version="{__version__}"')] == 1


def test_every_process_of_a_run_by_its_worker_label(tmp_path: Path, sleeper: int) -> None:
    """Worker 1 (this process), worker 2 and the supervisor (live processes), a worker
    whose process is gone, and a file that is not a pid file."""
    register_process(tmp_path, "worker-1")
    (tmp_path / "worker-2.pid").write_text(str(sleeper))
    (tmp_path / "supervisor.pid").write_text(str(os.getppid()))
    (tmp_path / "worker-3.pid").write_text("999999999")   # gone
    (tmp_path / "counter_123.pid").write_text(str(os.getpid()))   # not ours
    registry = CollectorRegistry()
    registry.register(RunProcesses(tmp_path))
    found = samples(generate_latest(registry).decode())
    memory = {labels: value for (name, labels), value in found.items()
              if name == "process_resident_memory_bytes"}
    assert set(memory) == {'worker="1"', 'worker="2"', 'worker="supervisor"'}
    assert all(value > 0 for value in memory.values())
    starts = {labels: value for (name, labels), value in found.items()
              if name == "process_start_time_seconds"}
    assert starts['worker="2"'] > starts['worker="1"'], "read from each process's own /proc"
    gc = {labels for (name, labels), _ in found.items() if name.startswith("python_gc_")}
    assert gc and all(labels.endswith('worker="1"') for labels in gc), "this process's own"


def test_a_pid_file_is_whole_and_only_written_with_a_directory(tmp_path: Path) -> None:
    register_process(None, "worker-1")   # one process: nothing to write, nowhere
    register_process(tmp_path, "worker-4")
    assert [p.name for p in tmp_path.iterdir()] == ["worker-4.pid"]
    assert (tmp_path / "worker-4.pid").read_text() == str(os.getpid())
