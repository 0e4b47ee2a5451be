"""The audit log's writer (DESIGN §7): every record, of every kind, is sealed into one hash
chain (`gateway.audit.chain`) and written here, to the file (`gateway.audit.sink`), stdout,
or both, before the action it records.

A record counts once the file has it whole (stdout, alone, is then the chain); if a sink
cannot take it, `AuditUnavailable` is raised and the caller takes no action (fail closed).
The file is checked before every record: deleted, renamed, replaced or truncated under the
gateway, it is reopened and an `audit` record (event `reopened`) says what was found before
anything else is written; after failed writes, an `audit` record (event `recovered`) says
since when and how many records were refused. Rotation (`rotated`), retention (`deleted`),
start (`opened`, naming the record it continues from) and a clean stop (`closed`) are
records of the same chain.

Records are written from the event loop (some inside a store transaction, before it
commits) and from the SQLite store's thread (expiry), so one lock keeps them whole, in
order, and the chain's `seq` without gaps. `fsync: always` syncs each record before the
action; `interval` leaves it to a thread that syncs every `fsync_interval_ms`; `never` to
the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.audit import chain
from gateway.audit.settings import AuditKeyError, AuditSettings, Fsync, chain_key
from gateway.audit.sink import FileSink, SinkBusy, sync_dir
from gateway.core.errors import AuditUnavailable

log = logging.getLogger("toolgate")


class AuditStartError(Exception):
    """The audit log cannot start: the gateway must not either."""


def _ts(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


class AuditLog:
    """Every configured sink, one chain; `write` puts one record in all of them or raises."""

    def __init__(self, settings: AuditSettings,
                 environ: Mapping[str, str] | None = None) -> None:
        if settings.file is None and not settings.stdout:
            raise AuditStartError("audit: no sink configured")
        self._settings = settings
        try:
            self._key = chain_key(settings, environ or {})
        except AuditKeyError as exc:
            raise AuditStartError(str(exc)) from None
        self._lock = threading.Lock()
        self._seq, self._prev = 0, chain.GENESIS
        self._trouble: dict[str, Any] | None = None
        self._dirty = False
        self._closed = False
        self._stdout = sys.stdout.fileno() if settings.stdout else None
        self.location = str(settings.file) if settings.file else "stdout"
        try:
            self._file = FileSink(settings.file) if settings.file is not None else None
        except (SinkBusy, OSError) as exc:
            raise AuditStartError(f"audit: {exc}") from None
        if self._file is not None:
            self._file.durable = settings.fsync is not Fsync.NEVER
        self._stdout_torn = False
        try:
            opened = self._resume()
            now = time.time()
            with self._lock:
                self._emit("audit", {"decision_id": None, "event": "opened",
                                     "pid": os.getpid(), "host": socket.gethostname(),
                                     "version": __version__, **opened}, now)
                self._retain(now)
        except OSError as exc:
            self.close(quiet=True)
            raise AuditStartError(f"audit: {self.location}: {exc.strerror or exc}") from None
        except ValueError as exc:   # the chain on disk: the message names file and line
            self.close(quiet=True)
            raise AuditStartError(f"audit: {exc}") from None
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self._file is not None and settings.fsync is Fsync.INTERVAL:
            self._syncer = threading.Thread(target=self._sync_every, name="audit-fsync",
                                            daemon=True)
            self._syncer.start()

    def _resume(self) -> dict[str, Any]:
        """Continue the chain on disk after checking its last record."""
        if self._file is None:
            return {"resumed": None}   # stdout alone: a new chain each start
        sink = self._file
        out: dict[str, Any] = {"resumed": None}
        discarded = sink.open(repair=True)
        tail = sink.tail()
        if tail is not None and tail.file == sink.path and not any(
                k in tail.record for k in ("seq", "prev_hash", "hash")):
            # A log written before the chain (0.1): kept, out of the chain's way.
            aside = sink.path.with_name(f"{sink.path.name}.unchained-{int(time.time())}")
            sink.path.rename(aside)
            sink.reopen()
            out["unchained"], discarded, tail = aside.name, 0, sink.tail()
        if discarded:
            # A torn last record: cut, and said. Its action may have run (the record was
            # whole in memory); its outcome, if any, is lost with it.
            out["discarded_bytes"] = discarded
        if sink.mode_fixed is not None:
            out["mode_fixed"] = sink.mode_fixed
        if tail is not None:
            record = tail.record
            # Whether the process before stopped cleanly: if not, records cut from the end
            # since (by a crash, or by a hand) cannot be told apart, and verify says so.
            out["previous_stop"] = ("clean" if (record.get("kind"), record.get("event"))
                                    == ("audit", "closed") else "unclean")
            if record.get("hash") != chain.hash_of(record, self._key) \
                    or not isinstance(record.get("seq"), int):
                raise ValueError(f"{tail.file}:{tail.line}: the last record does not verify "
                                 "(edited, or sealed with another key); run `toolgate audit "
                                 "verify`, and move the files aside to start a new chain")
            self._seq, self._prev = record["seq"], record["hash"]
            out["resumed"] = {"file": tail.file.name, "seq": self._seq}
        return out

    # -- writing ----------------------------------------------------------------------

    def write(self, kind: str, record: Mapping[str, Any]) -> None:
        with self._lock:
            now = time.time()   # under the lock: `ts` never goes back along `seq`
            try:
                self._prepare(now)
                self._emit(kind, record, now)
            except OSError as exc:
                self._failed(exc, now)
                raise AuditUnavailable("the audit log cannot be written; no action was "
                                       "taken") from exc

    def check(self) -> str | None:
        """None when a record can be written now (recovering first, as `write` would);
        else why not. For readiness probes: a quiet gateway recovers too. A probe is not a
        refused record: it does not count in `refused`."""
        with self._lock:
            if self._closed:
                return "the audit log is closed"
            now = time.time()
            try:
                self._prepare(now)
            except OSError as exc:
                self._failed(exc, now, refused=False)
                return f"the audit log cannot be written ({_name(exc)})"
            return None

    def _emit(self, kind: str, fields: Mapping[str, Any], now: float) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the audit log is closed")
        record = {"ts": _ts(now), "kind": kind, **fields}
        line, sealed = chain.seal(record, seq=self._seq + 1, prev_hash=self._prev,
                                  key=self._key)
        if self._file is not None:
            self._file.write(line)
            self._advance(sealed)
            if self._settings.fsync is Fsync.ALWAYS:
                assert self._file.fd is not None
                os.fdatasync(self._file.fd)
            else:
                self._dirty = True
        if self._stdout is not None:
            if self._stdout_torn:   # a line a failed write left unended: end it first
                _write_all(self._stdout, b"\n")
                self._stdout_torn = False
            try:
                _write_all(self._stdout, line)
            except OSError:
                self._stdout_torn = True
                raise
            if self._file is None:
                self._advance(sealed)

    def _advance(self, sealed: str) -> None:
        self._seq, self._prev = self._seq + 1, sealed

    def _failed(self, exc: OSError, now: float, *, refused: bool = True) -> None:
        if self._trouble is None:
            self._trouble = {"since": _ts(now), "refused": 0}
        if "error" not in self._trouble:   # the first failure is logged, not every one
            log.error("audit sink %s cannot be written (%s): calls are refused until it "
                      "can", self.location, _name(exc))
        self._trouble["error"] = _name(exc)
        self._trouble["refused"] += refused

    def _prepare(self, now: float) -> None:
        """Before a record: the file is still the one being written (else reopen it and
        say so), a past failure is recorded, rotation and retention are done."""
        if self._closed:
            raise OSError(errno.EBADF, "the audit log is closed")
        sink = self._file
        if sink is not None:
            found = sink.changed() if sink.fd is not None else "not_open"
            if found is not None:
                trouble = self._trouble or {"since": _ts(now), "refused": 0}
                trouble.setdefault("reason", found)    # what was found first
                self._trouble = trouble
                trouble.update(sink.reopen())
                log.error("audit file %s was %s; reopened", self.location, trouble["reason"])
        if self._trouble is not None:
            event = "reopened" if "reason" in self._trouble else "recovered"
            self._emit("audit", {"decision_id": None, "event": event, **self._trouble}, now)
            self._trouble = None
        if sink is not None and sink.size and self._due(sink, now):
            self._rotate(sink, now)

    def _due(self, sink: FileSink, now: float) -> bool:
        s = self._settings
        return ((s.rotate_bytes is not None and sink.size >= s.rotate_bytes)
                or (s.rotate_s is not None and sink.born is not None
                    and now - sink.born >= s.rotate_s))

    def _rotate(self, sink: FileSink, now: float) -> None:
        if self._settings.fsync is not Fsync.NEVER and sink.fd is not None:
            os.fdatasync(sink.fd)
        last = self._seq
        target = sink.rotate(now)
        self._emit("audit", {"decision_id": None, "event": "rotated",
                             "previous": target.name, "previous_last_seq": last}, now)
        self._retain(now)

    def _retain(self, now: float) -> None:
        sink, keep_s = self._file, self._settings.retain_s
        if sink is None or keep_s is None:
            return
        for ends in sink.expired(now, keep_s, self._sealed):
            assert ends.last is not None and ends.last_seq is not None
            self._emit("audit", {"decision_id": None, "event": "deleted",
                                 "file": ends.path.name, "reason": "retention",
                                 "retain_days": keep_s / 86_400, "first_seq": ends.first_seq,
                                 "last_seq": ends.last_seq, "last_hash": ends.last.get("hash"),
                                 "last_ts": ends.last.get("ts"),
                                 "first_seq_kept": ends.last_seq + 1}, now)
            if self._settings.fsync is not Fsync.NEVER and sink.fd is not None:
                os.fdatasync(sink.fd)   # the record of a deletion is on disk before it
            try:
                ends.path.unlink()
                if sink.durable:
                    sync_dir(sink.path.parent)
            except OSError as exc:
                log.exception("audit retention could not delete %s: %s", ends.path,
                              exc.strerror)

    def _sealed(self, record: dict[str, Any]) -> bool:
        return record.get("hash") == chain.hash_of(record, self._key)

    # -- durability and shutdown ------------------------------------------------------

    def _sync_every(self) -> None:
        while not self._stop.wait(self._settings.fsync_interval_s):
            self.sync()

    def sync(self) -> None:
        """Flush what was written to the disk (outside the lock: writers never wait)."""
        with self._lock:
            if not self._dirty or self._file is None or self._file.fd is None:
                return
            fd = os.dup(self._file.fd)
            self._dirty = False
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.exception("audit fsync failed: %s", exc.strerror)
        finally:
            os.close(fd)

    def close(self, quiet: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            if not quiet:
                try:
                    self._emit("audit", {"decision_id": None, "event": "closed"}, time.time())
                except OSError:
                    log.exception("audit: the closing record could not be written")
            self._closed = True
            sink, self._file = self._file, None
            if sink is not None:
                if not quiet and sink.fd is not None \
                        and self._settings.fsync is not Fsync.NEVER:
                    with contextlib.suppress(OSError):
                        os.fdatasync(sink.fd)
                sink.close()
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def _name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error")


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])
