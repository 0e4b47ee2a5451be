"""The supervisor of `toolgate serve --workers N`: starts the workers, passes signals on,
relays their news and their stdout, stops them all (`gateway.workers`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Settings
from gateway.logs import configure_logging

log = logging.getLogger("toolgate")
# After SIGTERM, a worker has its drain window (`shutdown.delay_ms + drain_ms`) and this much
# more to close (cancelled calls, background work, the audit log) before it is killed. With
# the defaults, 25 s: under Kubernetes' default 30 s grace, so our SIGKILL comes first.
TEARDOWN_S = 10.0
STOP_TIMEOUT_S = 15.0 + TEARDOWN_S
RELAY_CHUNK = 65_536
DRAIN_S = 5.0   # after the last worker exited, how long its stdout may still be read

Command = Callable[[int, int], Sequence[str]]   # (index, control fd) -> argv of a worker


def worker_command(config: Path, count: int) -> Command:
    def command(index: int, control_fd: int) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                "--worker", f"{index}/{count}", "--worker-parent", str(os.getpid()),
                "--worker-control-fd", str(control_fd)]
    return command


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    listening: bool = False  # said so: its signal handlers are in place
    pending: int | None = None   # a reload signal for when it listens
    relay: bytes = b""       # a line of its stdout not yet whole (with `relay_stdout`)
    failed_start: bool = False   # said it could not start (and why: printed once)

    @property
    def running(self) -> bool:
        return self.proc.returncode is None


class Supervisor:
    """Starts `count` workers, passes signals on, relays their news, stops them all."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

    def __init__(self, command: Command, count: int, environ: Mapping[str, str], *,
                 relay_stdout: bool = False, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._command, self.count, self._environ = command, count, dict(environ)
        self._relay_stdout = relay_stdout
        self._stop_timeout_s = stop_timeout_s
        self.children: list[_Child] = []
        self._stopping_since: float | None = None
        self._failed = False      # a worker died unasked, or did not stop cleanly
        self._start_failure: str | None = None   # the first worker's that could not start
        self._control = b""

    def run(self) -> int:
        """Start the workers and supervise them until they have all exited. 0 only if every
        one stopped cleanly when asked to; a worker that could not start has its `error:`
        line printed on stderr, once, whichever workers failed."""
        from gateway.metrics import (  # noqa: PLC0415 (prometheus_client)
            MULTIPROC_ENV,
            register_process,
        )

        metrics_dir = tempfile.mkdtemp(prefix="toolgate-metrics-")
        register_process(metrics_dir, "supervisor")   # its process metrics, too
        wake_r, wake_w = os.pipe()
        control_r, control_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        previous = {sig: signal.signal(sig, _noop) for sig in self.SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            env = {**self._environ, MULTIPROC_ENV: metrics_dir}
            for index in range(1, self.count + 1):
                proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                    self._command(index, control_w), env=env, pass_fds=(control_w,),
                    stdout=subprocess.PIPE if self._relay_stdout else None)
                self.children.append(_Child(index, proc))
            os.close(control_w)
            control_w = -1
            log.info("started %d workers (pids %s)", self.count,
                     " ".join(str(c.proc.pid) for c in self.children))
            self._loop(wake_r, control_r)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for child in self.children:   # only if the loop itself failed
                if child.running:
                    child.proc.kill()
                    child.proc.wait()
            for fd in (wake_r, wake_w, control_r, control_w):
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1 if self._failed else 0

    def _loop(self, wake_r: int, control_r: int) -> None:
        pipes = {c.proc.stdout.fileno(): c for c in self.children if c.proc.stdout}
        drained_by: float | None = None   # once every worker exited: their pipes' last bytes
        while any(c.running for c in self.children) or pipes:
            timeout = None
            if self._stopping_since is not None:
                timeout = max(0.0, self._stopping_since + self._stop_timeout_s
                              - time.monotonic())
                if timeout == 0:
                    self._kill_leftovers()
                    timeout = None
            if not any(c.running for c in self.children):
                drained_by = drained_by or time.monotonic() + DRAIN_S
                timeout = max(0.0, drained_by - time.monotonic())
                if timeout == 0:
                    break   # a pipe someone else holds open: what it kept is not ours
            watched = [fd for fd in (wake_r, control_r, *pipes) if fd >= 0]
            ready, _, _ = select.select(watched, [], [], timeout)
            if wake_r in ready:
                self._signals(os.read(wake_r, 512))
            # Read before reaping (also when a worker exited since `select`): what a worker
            # said before it exited (`failed …`) is known when its exit is.
            if control_r >= 0 and (control_r in ready or _readable(control_r)):
                news = os.read(control_r, 4096)
                self._news(news)
                if not news:   # every worker has closed it: they are exiting
                    control_r = -1
            for fd in ready:
                if fd in pipes and not self._relay(pipes[fd]):
                    del pipes[fd]
            self._reap()
        for child in self.children:
            if child.relay:   # a last record cut short: ended, so the next is whole
                _write_out(child.relay + b"\n")

    def _signals(self, received: bytes) -> None:
        for signum in received:
            if signum == signal.SIGINT and self._stopping_since is not None:
                # Ctrl-C again: each worker cuts its drain short (`gateway.serve`).
                self._signal(signal.SIGINT, self.children)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(f"signal {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP and self._stopping_since is None:
                log.info("SIGHUP: every worker reloads")
                self._reload(signal.SIGHUP, self.children)

    def _news(self, data: bytes) -> None:
        self._control += data
        *lines, self._control = self._control.split(b"\n")
        for line in lines:
            index, _, event = line.decode(errors="replace").partition(" ")
            if not index.isdigit() or not 1 <= int(index) <= self.count:
                continue
            child = self.children[int(index) - 1]
            if event == "listening":
                child.listening = True
                if child.pending is not None:
                    self._signal(child.pending, [child])
                    child.pending = None
                if all(c.listening for c in self.children):
                    log.info("every worker listens; worker 1 opens the admin port")
                    self._signal(signal.SIGUSR2, self.children[:1])
            elif event == "reload" and self._stopping_since is None:
                self._reload(signal.SIGUSR1, [c for c in self.children if c is not child])
            elif event.startswith("failed "):
                self._could_not_start(child, event.removeprefix("failed "))

    def _could_not_start(self, child: _Child, error: str) -> None:
        """A worker could not start (a port, the store, its audit file): the gateway cannot
        either. Its one line is printed once, however many workers fail alike."""
        child.failed_start = True
        self._failed = True
        if self._start_failure is None:
            self._start_failure = error
            print(f"error: {error}", file=sys.stderr, flush=True)
        self.stop(f"worker {child.index} could not start")

    def _reload(self, signum: int, children: Sequence[_Child]) -> None:
        """A reload signal to each worker that listens; one still starting gets it when it
        does (before, the signal would kill it, and the files it loaded may be older)."""
        for child in children:
            if child.listening:
                self._signal(signum, [child])
            else:
                child.pending = signum

    def _relay(self, child: _Child) -> bool:
        """Whole lines of a worker's stdout (its audit records with `audit.stdout`) to ours,
        so records of several workers never interleave inside a line. False at its end."""
        assert child.proc.stdout is not None
        try:
            data = os.read(child.proc.stdout.fileno(), RELAY_CHUNK)
        except OSError:
            data = b""
        if not data:
            return False
        child.relay += data
        end = child.relay.rfind(b"\n") + 1
        if end:
            _write_out(child.relay[:end])
            child.relay = child.relay[end:]
        return True

    def _reap(self) -> None:
        for child in self.children:
            if child.running and child.proc.poll() is not None:
                code = child.proc.returncode
                if child.failed_start or (self._start_failure is not None and code != 0):
                    # Said already; the others were stopped while they started, too.
                    self._failed = True
                elif self._stopping_since is None:
                    log.error("worker %d (pid %d) exited %s unasked; stopping the others",
                              child.index, child.proc.pid, code)
                    self._failed = True
                    self.stop("a worker exited")
                elif code != 0:
                    log.error("worker %d (pid %d) exited %s", child.index, child.proc.pid,
                              code)
                    self._failed = True

    def stop(self, why: str) -> None:
        if self._stopping_since is not None:
            return
        log.info("stopping every worker (%s)", why)
        self._stopping_since = time.monotonic()
        self._signal(signal.SIGTERM, self.children)

    def _kill_leftovers(self) -> None:
        for child in self.children:
            if child.running:
                log.error("worker %d (pid %d) still running %.0f s after SIGTERM: killed",
                          child.index, child.proc.pid, self._stop_timeout_s)
                child.proc.kill()
                self._failed = True

    @staticmethod
    def _signal(signum: int, children: Sequence[_Child]) -> None:
        for child in children:
            if child.running:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _noop(signum: int, frame: object) -> None:
    """Signals are read from the wakeup pipe (`signal.set_wakeup_fd`); this only catches
    them."""


def _write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(sys.stdout.fileno(), view):]
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                return   # our stdout is gone; the workers' writes fail as theirs would
            select.select([], [sys.stdout.fileno()], [])


def supervise(config: Path, settings: Settings, environ: Mapping[str, str],
              count: int) -> int:
    configure_logging(settings.log, supervisor=True)
    # SIGTERM's drain in each worker, then its teardown, before the supervisor kills it.
    stop_timeout_s = settings.shutdown.delay_s + settings.shutdown.drain_s + TEARDOWN_S
    return Supervisor(worker_command(config, count), count, environ,
                      relay_stdout=settings.audit.stdout, stop_timeout_s=stop_timeout_s).run()
