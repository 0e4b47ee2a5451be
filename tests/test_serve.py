"""`gateway.serve`: a gateway that cannot start says why in one line (`StartupError`), a
worker tells its supervisor instead of printing, and a stop drains the process — here in
process, on real sockets, with a real runtime. The whole `toolgate serve` on SIGTERM is in
tests/e2e/test_drain.py, its start-up failures in tests/e2e/test_startup_errors.py."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import logs, serve
from gateway.app import build_apps
from gateway.devtokens import DevKey
from gateway.listener.drain import DRAIN
from gateway.logs import loop_exception
from gateway.serve import MAX_LINE_BYTES, StartupError, _line, _serve
from gateway.web import RUNTIME
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

    # It may have run: the agent's retry with its key, on the restarted gateway, is
    # answered the 504 its key kept, and never sent again.
    upstream.release.set()   # a call sent again would be answered at once
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(_serve(settings, ENV, ready, stop))
    await asyncio.wait_for(ready.wait(), WAIT_S)
    try:
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/state/slow", json={"n": 1},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "drain-cut",
                         "X-Gate": "held"}) as retry:
            assert (retry.status, retry.headers.get("Idempotent-Replayed")) == (504, "true")
            error = (await retry.json())["error"]
    finally:
        stop.set()
        await asyncio.wait_for(serving, WAIT_S)
    assert (error["code"], error["request_id"]) == ("upstream_timeout", request_id)
    assert "may have run" in error["message"]
    assert len(upstream.seen) == 1, "sent once"


async def test_the_stop_tells_the_approval_sweeper_and_the_loop_logs_safely(
        tmp_path: Path, dev_key: DevKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once draining, the sweeper starts no call the drain could cut; and while serving,
    asyncio's reports of unhandled errors go through `gateway.logs.loop_exception`."""
    built: list[tuple[web.Application, web.Application]] = []

    def keep(*args: Any, **kwargs: Any) -> tuple[web.Application, web.Application]:
        built.append(build_apps(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(serve, "build_apps", keep)
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      listen=f"127.0.0.1:{free_port()}",
                      admin_listen=f"127.0.0.1:{free_port()}")
    ready, stop = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(_serve(settings, ENV, ready, stop))
    await asyncio.wait_for(ready.wait(), WAIT_S)
    assert asyncio.get_running_loop().get_exception_handler() is loop_exception
    [(app, admin)] = built
    sweeper = app[RUNTIME].sweeper
    assert not sweeper.draining and not admin[DRAIN].draining
    stop.set()
    await asyncio.wait_for(serving, WAIT_S)
    assert sweeper.draining and admin[DRAIN].draining


def test_a_start_up_line_fits_one_pipe_write_in_bytes_not_characters() -> None:
    """A write under PIPE_BUF reaches the supervisor whole: 3,000 characters of Cyrillic
    are 6,000 bytes, so the line is cut in bytes — on a character boundary."""
    for text in ("ж" * 3000, "a" + "€" * 2000, "x" * 5000, "名" * 1001):
        line = _line(StartupError(text))
        assert MAX_LINE_BYTES - 3 < len(line.encode()) <= MAX_LINE_BYTES < select.PIPE_BUF
        assert len(f"99 failed {line}\n".encode()) <= select.PIPE_BUF
        assert text.startswith(line), "whole characters only"
    # An undecodable file name's lone surrogate is escaped: the line must encode.
    assert _line(StartupError("cannot read /etc/\udcff.pem")) == "cannot read /etc/\\udcff.pem"
    assert _line(StartupError("a  b\nc")) == "a b c"
