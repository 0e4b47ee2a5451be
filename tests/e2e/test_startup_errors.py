"""Whatever stops `toolgate serve` before it serves is one line on stderr — `error: <what
failed and how to fix it>` — and exit 1, never a traceback; with `--workers 2` too, where
a failure in the supervisor's checks or in a worker's own start is said once.

Each failure is real: a port another socket listens on, a PostgreSQL database that does not
exist on the test server, a port nothing listens on, directories made immutable (`chattr
+i`, which stops root as well)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream, closed_port, toolgate_command
from tests.e2e.postgres_support import required_dsn
from tests.e2e.profiles import state_gateway

pytestmark = pytest.mark.one_engine   # about the process's start, not the policy engine

WORKERS = ("--workers", "2")
MODES = [pytest.param((), id="one-process"), pytest.param(WORKERS, id="workers-2")]


def configured(directory: Path, dev_key: DevKey, upstream: Upstream, **extra: object
               ) -> Gateway:
    """A gateway's directory and config, written as `Gateway.start` writes them, not run."""
    gw = state_gateway(directory, dev_key, upstream, **extra)
    gw.directory.mkdir(parents=True, exist_ok=True)
    gw.key.save(gw.directory / "keys")
    (gw.directory / "toolgate.yaml").write_text(yaml.safe_dump(gw.config(), sort_keys=False),
                                                encoding="utf-8")
    return gw


def serve(gw: Gateway, mode: tuple[str, ...]) -> str:
    """`toolgate serve` that must fail: its one `error:` line. Every other line it wrote
    on stderr is a JSON log line, and none is part of a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env.update({"UPSTREAM_TOKEN": "x", "TMPDIR": str(gw.directory)})
    done = subprocess.run([*toolgate_command(), "serve", "--config",
                           str(gw.directory / "toolgate.yaml"), *mode],
                          capture_output=True, text=True, env=env, timeout=90, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for line in done.stderr.splitlines():
        if not line.startswith("error: "):
            json.loads(line)   # a log line, one JSON object
    return errors[0]


@contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """No file can be made in `directory`, even by root, while inside."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chattr", "+i", str(directory)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True, capture_output=True)


@pytest.mark.parametrize("mode", MODES)
def test_the_agent_port_in_use(tmp_path: Path, dev_key: DevKey, upstream: Upstream,
                               mode: tuple[str, ...]) -> None:
    gw = configured(tmp_path / "gw", dev_key, upstream)
    with socket.socket() as other:
        other.bind(("127.0.0.1", gw.port))
        other.listen()
        line = serve(gw, mode)
    assert line == (f"error: listen: 127.0.0.1:{gw.port}: the port is already in use by "
                    f"another process: stop that process (`ss -ltnp 'sport = :{gw.port}'` "
                    "names it) or set `listen` to a free port")


@pytest.mark.parametrize("mode", MODES)
def test_the_admin_port_in_use(tmp_path: Path, dev_key: DevKey, upstream: Upstream,
                               mode: tuple[str, ...]) -> None:
    """With workers, worker 1 finds it taken once every worker listens: the supervisor says
    it once and stops the other worker."""
    gw = configured(tmp_path / "gw", dev_key, upstream)
    with socket.socket() as other:
        other.bind(("127.0.0.1", gw.admin_port))
        other.listen()
        line = serve(gw, mode)
    assert line.startswith(f"error: admin_listen: 127.0.0.1:{gw.admin_port}: the port is "
                           "already in use by another process")


@pytest.mark.parametrize("mode", MODES)
def test_a_postgresql_database_that_does_not_exist(tmp_path: Path, dev_key: DevKey,
                                                   upstream: Upstream,
                                                   mode: tuple[str, ...]) -> None:
    dsn = required_dsn()
    name = f"toolgate_missing_{uuid.uuid4().hex[:12]}"
    gw = configured(tmp_path / "gw", dev_key, upstream,
                    store=f"{dsn.rsplit('/', 1)[0]}/{name}")
    line = serve(gw, mode)
    assert re.fullmatch(rf'error: store: database "{name}" does not exist on PostgreSQL at '
                        rf"[^ ]+:\d+: create it \(`createdb -h [^`]+ {name}`\) or name an "
                        r"existing one in `store`", line), line


def test_a_postgresql_server_that_refuses_the_connection(tmp_path: Path, dev_key: DevKey,
                                                         upstream: Upstream) -> None:
    port = closed_port()
    gw = configured(tmp_path / "gw", dev_key, upstream,
                    store=f"postgresql://toolgate:not-logged@127.0.0.1:{port}/toolgate")
    line = serve(gw, ())
    assert line == (f"error: store: cannot connect to PostgreSQL at 127.0.0.1:{port}: "
                    "connection refused: is the server running and listening there? Check "
                    "the host and port in `store`")


def test_a_dsn_whose_password_breaks_its_parsing_is_never_quoted(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream) -> None:
    """An unencoded `/` in the password: asyncpg's error would quote a piece of it. Nothing
    on stderr does — neither the `error:` line nor a log line."""
    gw = configured(tmp_path / "gw", dev_key, upstream,
                    store="postgresql://toolgate:q8Zk/3v+Lm==@127.0.0.1/tg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    env.update({"UPSTREAM_TOKEN": "x", "TMPDIR": str(gw.directory)})
    done = subprocess.run([*toolgate_command(), "serve", "--config",
                           str(gw.directory / "toolgate.yaml")],
                          capture_output=True, text=True, env=env, timeout=90, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "error: store: the PostgreSQL DSN cannot be parsed; percent-encode special "
        "characters in the password"), done.stderr
    assert "q8Zk" not in done.stderr and "3v+Lm" not in done.stderr, done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_a_state_directory_that_cannot_be_written(tmp_path: Path, dev_key: DevKey,
                                                  upstream: Upstream,
                                                  mode: tuple[str, ...]) -> None:
    gw = configured(tmp_path / "gw", dev_key, upstream)
    state = gw.directory / "state"
    with immutable(state):
        line = serve(gw, mode)
    assert line.startswith(f"error: store: cannot open the SQLite file {state}/toolgate.db: "
                           f"{state} is not writable: its directory must be one this user")


@pytest.mark.parametrize("mode", MODES)
def test_an_audit_directory_that_cannot_be_written(tmp_path: Path, dev_key: DevKey,
                                                   upstream: Upstream,
                                                   mode: tuple[str, ...]) -> None:
    """Every worker fails alike on its own chain's file: said once."""
    gw = configured(tmp_path / "gw", dev_key, upstream)
    audit = gw.audit_file.parent
    with immutable(audit):
        line = serve(gw, mode)
    assert re.fullmatch(rf"error: audit: cannot write {audit}/toolgate(\.w2)?\.jsonl: "
                        rf"{audit} is not writable: audit\.file must be in a directory this "
                        r"user \(uid \d+\) can create and write", line), line
