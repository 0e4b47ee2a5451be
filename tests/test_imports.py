"""Every entry point and package of the gateway imports on its own, in a fresh
interpreter: an import cycle hidden by the order pytest happens to import modules in
would break `python -m gateway.<x>` or a library user's first import."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import gateway

ENTRY_POINTS = ["gateway.cli.main", "gateway.serve", "gateway.demo", "gateway.runtime",
                "gateway.app", "gateway.example_upstream"]
PACKAGES = sorted(f"gateway.{m.name}" for m in pkgutil.iter_modules(gateway.__path__)
                  if m.ispkg)


def test_every_entry_point_and_package_imports_alone() -> None:
    failures = []
    for module in ["gateway", *ENTRY_POINTS, *PACKAGES]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            failures.append(f"{module}: {done.stderr.strip().splitlines()[-1]}")
    assert not failures, "\n".join(failures)
