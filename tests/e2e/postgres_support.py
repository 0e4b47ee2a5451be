"""PostgreSQL for the end-to-end tests: a fresh database on the machine's server, or a
private server the test starts itself (initdb into a temporary directory, its own port,
stopped by PID at the end) — never the shared server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.harness import free_port
from tests.store.conftest import HOW, postgres_dsn


def required_dsn() -> str:
    dsn = postgres_dsn()
    if dsn is None:
        pytest.skip(HOW)
    return dsn


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    dsn = required_dsn()
    name = f"toolgate_e2e_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")) or (
        [Path(p)] if (p := shutil.which(name)) else [])
    if not found:
        raise RuntimeError(f"{name} not found: install the PostgreSQL server package")
    return str(found[-1])


class PrivatePostgres:
    """A throwaway server in `directory`, on its own port, owned by the postgres user when
    the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # the postgres user.
        self.base = Path(tempfile.mkdtemp(prefix="toolgate-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.pid: int | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        for d in (self.data, self.socket_dir):
            d.mkdir(mode=0o700)
            if os.geteuid() == 0:
                shutil.chown(d, "postgres", "postgres")
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
                  "-w", "-t", "60", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop_immediately(self) -> None:
        """Like a crash of the database server: no shutdown checkpoint, clients cut off."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.pid = None

    def kill(self) -> None:
        """Stop by PID, whatever state it is in (test clean-up)."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGQUIT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self.pid = None

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
