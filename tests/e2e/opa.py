"""The OPA server the end-to-end suite runs its gateways against when the engine is `opa`:
`tests/opa_server.py` in a subprocess, loaded with the gateway's own policy files."""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.net import free_port, request

ROOT = Path(__file__).resolve().parent.parent.parent
# The real OPA engine is a test-only dependency (`.ci/run` and the README install it).
HAVE_OPA = importlib.util.find_spec("opa_bindings") is not None
ENGINES = ("embedded", "opa") if HAVE_OPA else ("embedded",)


@dataclass
class OpaServer:
    policies: list[Path]
    log_file: Path
    revision: str = "bundle-r1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.opa_server", "--port", str(self.port),
                 "--revision", self.revision, *map(str, self.policies)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the OPA test server exited {self.proc.returncode}:\n"
                                   + self.log_file.read_text(errors="replace"))
            with contextlib.suppress(OSError):
                if request(self.port, "GET", "/health", timeout=2).status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the OPA test server did not start")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set(self, **settings: Any) -> None:
        """Make it answer late (`delay_ms`), fail (`status`) or name another revision."""
        query = "&".join(f"{k}={v}" for k, v in settings.items())
        assert request(self.port, "POST", f"/_test/set?{query}").status == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
