"""The processes a load run starts, and what /proc says about them.

Every process starts in a session of its own. Stopping one signals its whole process group,
so nginx's worker and the children of `toolgate serve --workers N` go with their parent, and
a Ctrl-C at the terminal reaches the bench alone, which then stops the rest itself.
`leftovers` asks `ps` afterwards whether any of those groups still has a member.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

TICKS = os.sysconf("SC_CLK_TCK")
GRACE_S = 15.0   # `toolgate serve` drains in-flight calls on SIGTERM before it exits


class RunError(Exception):
    """The run cannot go on (a process died, timed out, or answered wrongly)."""


class Processes:
    """Everything this run started, stopped on `stop_all` (TERM, then KILL after a grace)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], *, out: Path, cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        with out.open("ab") as sink:
            proc = subprocess.Popen(list(argv), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=None if env is None else dict(env),
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
        """The exit status; a process still running after `timeout_s` is stopped, and the
        run fails (the `timeout` of a shell script, without the shell)."""
        try:
            status = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise RunError(f"{proc.args[0]} still running after {timeout_s:.0f} s") from None
        if not _members(proc.pid):
            # Gone with its whole group: forgotten, so that its pid, once the kernel hands
            # it out again, is never signalled as a group of ours.
            self.started.remove(proc)
        return status

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop(proc)

    def leftovers(self) -> list[str]:
        """`ps` lines of any live process still in a group this run started."""
        groups = {p.pid for p in self.started}
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True,
                            text=True, timeout=10, check=True)
        left = []
        for line in ps.stdout.splitlines():
            _, pgid, stat = line.split(None, 3)[:3]
            if int(pgid) in groups and not stat.startswith("Z"):   # a zombie runs nothing
                left.append(line.strip())
        return left


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process and its group: SIGTERM, then SIGKILL for any member still alive after
    `GRACE_S`. The group is watched, not only its leader, for members it may leave behind."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    deadline = time.monotonic() + GRACE_S
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE_S)
    while _members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        state, _, group = text[text.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state != "Z":
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks used: utime + stime) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(root: int) -> dict[int, int]:
    """CPU ticks of `root` and every descendant (workers, helpers), by pid."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    found: dict[int, int] = {}
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = stats[pid][1]
            todo.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return found


def cpu_seconds(root: int) -> float:
    return sum(tree(root).values()) / TICKS


def _status_kib(pid: int, field: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field)), 0)


def rss_mib(root: int) -> float:
    """Resident memory of the whole tree now (every worker counts)."""
    return sum(_status_kib(pid, "VmRSS:") for pid in tree(root)) / 1024


def hwm_mib(root: int) -> float:
    """The largest peak resident size (VmHWM) of any one process in the tree."""
    return max((_status_kib(pid, "VmHWM:") for pid in tree(root)), default=0) / 1024


class RssSampler:
    """Samples the tree's resident memory while a load runs, in a thread (the load
    generator blocks the main one); `peak_mib` is the largest sample."""

    def __init__(self, root: int, every_s: float = 0.25) -> None:
        self.root, self.every_s = root, every_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, rss_mib(self.root))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
