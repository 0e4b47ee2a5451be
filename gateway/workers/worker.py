"""What a worker of `toolgate serve --workers N` knows of its place: its index, its
supervisor, the pipe to it, and its own audit chain."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
from dataclasses import dataclass, replace

from gateway.audit.files import worker_file
from gateway.config import Settings

MAX_WORKERS = 64
PR_SET_PDEATHSIG = 1    # <linux/prctl.h>


class WorkersError(ValueError):
    """A `--workers` value, or a config `--workers N` cannot run: one line for the CLI."""


def workers_count(text: str) -> int:
    """`--workers N`: 1 to `MAX_WORKERS`. Raises `WorkersError`."""
    if not re.fullmatch(r"[0-9]{1,4}", text.strip()) or not \
            1 <= int(text) <= MAX_WORKERS:
        raise WorkersError(f"--workers: {text!r} is not a number of workers from 1 to "
                           f"{MAX_WORKERS}")
    return int(text)


@dataclass(frozen=True)
class Worker:
    """What a worker process knows of its place: `index` of `count` (1-based), the
    supervisor's pid and the pipe to tell it things on."""

    index: int
    count: int
    parent: int
    control_fd: int

    @classmethod
    def parse(cls, spec: str, parent: int | None, control_fd: int | None) -> Worker:
        """`--worker I/N --worker-parent PID --worker-control-fd FD`, as the supervisor
        writes them. Raises `WorkersError`."""
        found = re.fullmatch(r"([0-9]{1,4})/([0-9]{1,4})", spec)
        if found is None or not 1 <= int(found[1]) <= int(found[2]) <= MAX_WORKERS:
            raise WorkersError(f"--worker: {spec!r} is not I/N")
        if parent is None or control_fd is None:
            raise WorkersError("--worker is set by the supervisor of --workers N, with "
                               "--worker-parent and --worker-control-fd")
        return cls(int(found[1]), int(found[2]), parent, control_fd)

    @property
    def serves_admin(self) -> bool:
        return self.index == 1

    def settings(self, settings: Settings) -> Settings:
        """The config as this worker runs it: its own audit chain."""
        if settings.audit.file is None:
            return settings
        return replace(settings, audit=replace(
            settings.audit, file=worker_file(settings.audit.file, self.index)))

    def tell(self, event: str) -> bool:
        """One line to the supervisor (`listening`, `reload`, `failed <error>`): a write
        under PIPE_BUF is whole, whichever workers write at once. False if it is gone."""
        line = f"{self.index} {event}\n".encode()
        try:
            return os.write(self.control_fd, line) == len(line)
        except OSError:   # the supervisor is gone: we are stopping
            return False

    def die_with_parent(self) -> bool:
        """Ask the kernel for SIGTERM when the supervisor dies (Linux); False when the
        worker must watch its parent itself. Exits at once if the supervisor is gone."""
        armed = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        if not self.parent_alive():   # it died before the request: nobody will signal
            raise SystemExit(1)
        return armed

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent
