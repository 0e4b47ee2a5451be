"""The audit file: a JSON-lines file that cannot silently vanish.

One process writes one file (an exclusive lock on a `.<name>.lock` beside it refuses a
second), appending each record with `write(2)` on an `O_APPEND` descriptor, mode 0600.
Before each write the sink checks that the path still names the file it holds: a file
deleted, renamed, replaced (by another file or a directory) or truncated under it is
noticed, and the sink reopens the path — or fails until it can — and says what it found,
so the log (`gateway.audit.log`) writes a record of it first. A write that fails part way
is rolled back (the file is cut back to its last whole record), so a torn record is never
followed by another.

Rotation renames the live file to its rotated name (`gateway.audit.files`) and starts a
new one; retention deletes rotated files whose last record is older than the limit, oldest
first, so the chain kept is always a whole tail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit.files import (
    Ends,
    chain_ends,
    end_of_last_line,
    family,
    first_ts,
    last_line,
    record_of,
    rotated_name,
)


class SinkBusy(Exception):
    """Another process holds the audit file: two writers would fork one chain."""


@dataclass(frozen=True)
class Tail:
    """The last whole record of a chain on disk, and where it is."""
    record: dict[str, Any]
    file: Path
    line: int


class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(path.parent / f".{path.name}.lock",
                                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SinkBusy(f"{path} is being written by another process; each gateway "
                           "process needs an audit file of its own") from None
        self.fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self.size = 0
        self.born: float | None = None      # time of the live file's first record
        self.durable = True                 # sync the directory after creating, renaming
        self.mode_fixed: str | None = None  # the mode an opened file had, if not 0600

    # -- opening ----------------------------------------------------------------------

    def open(self, *, repair: bool = False) -> int:
        """Open (or create) the path as the live file. At start (`repair`), a torn last
        line — a record the previous process never finished — is cut off, and its length
        returned; later, a file that does not end a line (someone else's bytes) is left as
        it is and the next record starts on a line of its own."""
        # SECURITY: the log holds arguments (redacted) and decisions; owner-only. No
        # symlink is followed: what the path names is what gets the records.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
        # SECURITY: a file someone else put in its place would let them read every record
        # to come; one that others may read is made owner-only, and the record says so.
        if info.st_uid != os.geteuid():
            os.close(fd)
            raise OSError(errno.EPERM, f"{self.path} belongs to another user")
        self.mode_fixed = None
        if stat.S_IMODE(info.st_mode) & 0o077:
            self.mode_fixed = oct(stat.S_IMODE(info.st_mode))
            os.fchmod(fd, 0o600)
        if info.st_size == 0 and self.durable:
            sync_dir(self.path.parent)   # a new file survives a power cut as a name too
        discarded = 0
        if info.st_size:
            with self.path.open("rb") as f:
                f.seek(info.st_size - 1)
                torn = f.read(1) != b"\n"
            if torn and repair:
                end = end_of_last_line(self.path, info.st_size)
                discarded = info.st_size - end
                os.ftruncate(fd, end)
            elif torn:
                os.write(fd, b"\n")
        self.fd, self._ident = fd, (info.st_dev, info.st_ino)
        self.size = os.fstat(fd).st_size
        self.born = first_ts(self.path) if self.size else None
        return discarded

    def tail(self) -> Tail | None:
        """The chain's last whole record on disk — the one with the highest `seq` among the
        last records of the chain's files, whatever their names say (a clock set back
        names a newer file older) — or None for a new chain."""
        best: tuple[int, Path] | None = None
        for path in family(self.path):
            record = record_of(last_line(path, count=False))
            seq = record.get("seq")
            if isinstance(seq, int) and (best is None or seq > best[0]):
                best = (seq, path)
            elif best is None and record and path == self.path:
                best = (0, path)     # a last record without a chain: said by the caller
        if best is None:
            return None
        found = last_line(best[1])
        assert found is not None
        record = record_of(found)
        if not record:
            raise ValueError(f"{best[1]}:{found[1]}: not a JSON record")
        return Tail(record, best[1], found[1])

    # -- watching ---------------------------------------------------------------------

    def changed(self) -> str | None:
        """Why the path no longer names the file being written as it was left (`missing`,
        `replaced`, `truncated`, `appended`), or None."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return "missing"
        if (info.st_dev, info.st_ino) != self._ident or not stat.S_ISREG(info.st_mode):
            return "replaced"
        if info.st_size < self.size:
            return "truncated"
        if info.st_size > self.size:
            return "appended"    # another writer: its bytes break the chain where they are
        return None

    def reopen(self) -> dict[str, Any]:
        """Open whatever the path now names; the files before and after, for the record.
        Raises `OSError` while the path cannot be a file (a directory, no permission…).
        The old descriptor is closed only after, so the new file cannot take its inode."""
        before = {"inode": self._ident[1], "bytes": self.size}
        old, self.fd = self.fd, None     # on failure, nothing more goes to the old file
        try:
            self.open()
        finally:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.close(old)
        return {"before": before, "after": {"inode": self._ident[1], "bytes": self.size}}

    # -- writing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Append whole or not at all: a write that fails part way is cut back."""
        if self.fd is None:
            raise OSError(errno.EBADF, "the audit file is not open")
        start = self.size
        try:
            written = os.write(self.fd, data)
            while written < len(data):   # only on a full disk or a file size limit
                written += os.write(self.fd, data[written:])
        except OSError:
            try:
                if os.fstat(self.fd).st_size > start:
                    os.ftruncate(self.fd, start)
            except OSError:
                pass   # the next write's check sees the size and reopens
            raise
        self.size = start + len(data)
        # SECURITY: deleted between the check before the write and the write itself, the
        # record is in no file: it does not count, and the action does not happen.
        if os.fstat(self.fd).st_nlink == 0:
            raise OSError(errno.ENOENT, "the audit file was deleted as it was written")
        if self.born is None:
            self.born = first_ts(self.path)

    def rotate(self, now: float) -> Path:
        """Rename the live file out and start a new one; the rotated file's new path."""
        target = rotated_name(self.path, now)
        while target.exists():   # two rotations in one microsecond: never overwrite
            now += 1e-6
            target = rotated_name(self.path, now)
        self.path.rename(target)
        self.close_file()
        self.open()            # creates the new live file (and syncs the directory)
        return target

    def expired(self, now: float, keep_s: float,
                key_check: Callable[[dict[str, Any]], bool]) -> list[Ends]:
        """Rotated files whose last record was sealed more than `keep_s` ago, in chain order,
        stopping at the first one that was not (so what is kept stays one unbroken tail).
        The age is the last record's own `ts`, its seal checked (`key_check`), never the
        file's mtime, which anyone who can touch the directory can set."""
        ends = sorted((e for e in (chain_ends(p) for p in family(self.path)
                                   if p != self.path) if e.last_seq is not None),
                      key=lambda e: e.first_seq or 0)
        out = []
        for e in ends:
            if (e.last is None or not key_check(e.last) or e.last_ts is None
                    or now - e.last_ts < keep_s):
                break
            out.append(e)
        return out

    def close_file(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        self.close_file()
        os.close(self._lock_fd)


def sync_dir(directory: Path) -> None:
    """Make a directory's entries (a file created, renamed, removed) survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


