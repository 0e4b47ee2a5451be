"""The process's open files: room for the connection caps, and a watch on what is left.

Past the open-file limit, uvloop (libuv) accepts each waiting connection and closes it at
once to shed the load, and tells nobody: the client sees a reset, the gateway nothing, and
the first to go are the kubelet's probes. So before it starts, `fit_open_files` makes room
for the caps (raising the soft limit to the hard one, as Go does) or refuses to start; while
it runs, `watch` logs an ERROR when the open files near the limit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from pathlib import Path

from gateway.config import Settings
from gateway.core.errors import LoadError, LoadErrors
from gateway.listener import MAX_LINGERING

log = logging.getLogger("toolgate")
# Open files besides the connections and pools: stdio, the listening sockets, the event
# loop's own (epoll, wake-up pipe, libuv's spare descriptor), the audit file, specs and
# policies while a reload reads them, DNS lookups, the webhook — with room to spare.
PROCESS_OPEN_FILES = 64
# Connections refused at a cap, left open a moment to read their 503: both ports'.
REFUSED_OPEN_FILES = 2 * MAX_LINGERING
STORE_OPEN_FILES = {"sqlite": 4,      # the database, its WAL, shared memory and journal
                    "postgres": 10}   # the pool's max_size (gateway.store.postgres)
OPEN_FILES_CHECK_S = 5.0


def fit_open_files(settings: Settings) -> None:
    """Raise the soft open-file limit to the hard one when the caps need more (as Go does
    at start); if even the hard limit is too low, refuse to start (`LoadErrors`), naming
    the numbers. Refusing rather than lowering the caps: a cap the operator set is a
    promise of capacity, and a start-up error is found at once, not under load."""
    pools = sum(up.max_connections for up in settings.upstreams.values())
    other = PROCESS_OPEN_FILES + REFUSED_OPEN_FILES + STORE_OPEN_FILES[
        "sqlite" if settings.sqlite_path is not None else "postgres"]
    needed = settings.max_connections + settings.admin_max_connections + pools + other
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
        else:
            log.info("raised the open-file limit from %d to %d (the gateway needs %d)",
                     soft, target, needed)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise LoadErrors([LoadError("limits", None, (
            f"the gateway needs {needed} open files — limits.max_connections "
            f"{settings.max_connections} + limits.admin_max_connections "
            f"{settings.admin_max_connections} + {pools} for the upstream pools "
            f"(upstreams.*.max_connections) + {other} for the store, the audit log, refused "
            f"connections and the process — but its open-file limit is {soft} (hard limit "
            f"{hard}); raise the limit (ulimit -n, LimitNOFILE= under systemd, the "
            "container's nofile ulimit) or lower those caps"))])


async def watch() -> None:
    """Check the open files every `OPEN_FILES_CHECK_S`, until cancelled."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return   # no limit to come near
    files = OpenFiles(soft)
    while True:
        await asyncio.sleep(OPEN_FILES_CHECK_S)
        await asyncio.to_thread(files.check)   # listing thousands of descriptors takes a while


def count_open_files() -> int:
    """The file descriptors this process has open (Linux, and macOS through /dev/fd)."""
    for directory in (Path("/proc/self/fd"), Path("/dev/fd")):
        if directory.is_dir():
            return sum(1 for _ in directory.iterdir())
    raise OSError("no way to count open files here")


class OpenFiles:
    """How close the process is to its open-file limit, said in the log.

    At the limit, uvloop (libuv) accepts each waiting connection and closes it at once to
    shed the load, and tells nobody: the client sees a reset, and the gateway nothing. So
    `check` logs an ERROR once when the open files come within a few of `limit` (or cannot
    even be counted for want of one), and an INFO when there is room again.
    """

    def __init__(self, limit: int, count: Callable[[], int] = count_open_files) -> None:
        self.limit = limit
        self._count = count
        self._margin = max(16, limit // 20)
        self.short = False

    def check(self) -> None:
        try:
            used: int | None = self._count()
        except OSError:   # EMFILE: listing the descriptors needs one more
            used = None
        short = used is None or used >= self.limit - self._margin
        if short and not self.short:
            log.error("open files at %s of the limit %d: new connections may be reset before "
                      "the gateway sees them; raise the open-file limit or lower the "
                      "connection caps (limits.max_connections, "
                      "limits.admin_max_connections)", used if used is not None else "all",
                      self.limit)
        elif self.short and not short:
            log.info("open files back to %s of the limit %d", used, self.limit)
        self.short = short
