"""`gateway.serve`: a gateway that cannot start says why in one line (`StartupError`), a
worker tells its supervisor instead of printing, and a stop drains the process — here in
process, on real sockets, with a real runtime. The whole `toolgate serve` on SIGTERM is in
tests/e2e/test_drain.py, its start-up failures in tests/e2e/test_startup_errors.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway import logs, serve
from gateway.devtokens import DevKey
from gateway.serve import StartupError, _serve
from tests.support import UPSTREAM_SECRET, Recorder, config

ENV = {"UPSTREAM_TOKEN": UPSTREAM_SECRET}
WAIT_S = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def audit(directory: Path) -> list[dict[str, object]]:
    path = directory / "audit" / "toolgate.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_demo_finds_the_logging_setup_where_it_was() -> None:
    assert serve.configure_logging is logs.configure_logging


async def test_a_port_in_use_is_one_line_naming_the_key_and_the_fix(
        tmp_path: Path, dev_key: DevKey, taken: int) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9", listen=f"127.0.0.1:{taken}",
                      admin_listen=f"127.0.0.1:{free_port()}")
    with pytest.raises(StartupError) as caught:
        await _serve(settings, ENV)
    assert str(caught.value).startswith(f"listen: 127.0.0.1:{taken}: the port is already in "
                                        "use by another process: stop that process")
    assert "\n" not in str(caught.value)
    last = audit(tmp_path)[-1]
    assert (last["kind"], last["event"]) == ("audit", "closed"), "what opened is closed"


async def test_the_admin_port_in_use_names_admin_listen(tmp_path: Path, dev_key: DevKey,
                                                        taken: int) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      listen=f"127.0.0.1:{free_port()}", admin_listen=f"127.0.0.1:{taken}")
    with pytest.raises(StartupError, match=rf"^admin_listen: 127\.0\.0\.1:{taken}: the port"):
        await _serve(settings, ENV)


def test_a_worker_that_cannot_start_tells_its_supervisor_and_prints_nothing(
        tmp_path: Path, dev_key: DevKey, taken: int) -> None:
    """`--worker I/N` as the supervisor starts it, with this test as the supervisor: the
    failure comes over the control pipe, for the supervisor to print once."""
    config(tmp_path, dev_key, "http://127.0.0.1:9", listen=f"127.0.0.1:{taken}",
           admin_listen=f"127.0.0.1:{free_port()}")
    read, write = os.pipe()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "toolgate.yaml"),
         "--worker", "1/1", "--worker-parent", str(os.getpid()),
         "--worker-control-fd", str(write)],
        pass_fds=(write,), capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **ENV})
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        told = pipe.read().decode()
    assert done.returncode == 1
    assert "error:" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert told.startswith(f"1 failed listen: 127.0.0.1:{taken}: the port is already in use")
    assert told.endswith("\n") and told.count("\n") == 1


async def test_a_call_still_in_flight_when_the_window_ends_is_cancelled_and_recorded(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str]) -> None:
    """`shutdown.drain_ms: 0`: the stop cancels the call held at the upstream; its
    decision record stands, its outcome says `cancelled`, the log ends `closed`."""
    upstream, url = recorder
    port, admin_port = free_port(), free_port()
    settings = config(tmp_path, dev_key, url, listen=f"127.0.0.1:{port}",
                      admin_listen=f"127.0.0.1:{admin_port}", shutdown={"drain_ms": 0})
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(_serve(settings, ENV, ready, stop))
    await asyncio.wait_for(ready.wait(), WAIT_S)
    token = dev_key.token("svc-agent", tenant="acme", scopes=["echo:write"])
    async with aiohttp.ClientSession() as session:
        call = asyncio.create_task(session.post(
            f"http://127.0.0.1:{port}/state/slow", json={"n": 1},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "drain-cut",
                     "X-Gate": "held"}))
        deadline = time.monotonic() + WAIT_S
        while not upstream.seen:
            assert time.monotonic() < deadline, "the call never reached the upstream"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(serving, WAIT_S)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call
    request_id = upstream.seen[0].headers["X-Request-Id"]
    mine = [r for r in audit(tmp_path) if r["decision_id"] == request_id]
    assert [r["kind"] for r in mine] == ["decision", "outcome"]
    assert mine[1]["error"] == "cancelled"
    last = audit(tmp_path)[-1]
    assert (last["kind"], last["event"]) == ("audit", "closed")
