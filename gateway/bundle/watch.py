"""The optional file watch (`policy.watch_ms`): a reload when the spec or policy files change.

Every `watch_ms` the watch takes a fingerprint of the files the bundle is built from: the
tool specs, and the policies unless OPA serves them (path and SHA-256 of the content, so a
rewrite of the same size within the clock's resolution is seen too). When it changes, it
waits one more interval for the change to settle (an editor or `kubectl cp` writes in
steps, a ConfigMap swaps a symlink), then asks the `Reloader` — the same path as SIGHUP and
the API, so a broken change is refused, recorded, and the old bundle keeps serving. A
reload that could not be recorded (the audit log is down) is tried again at the next
interval. Polling rather than inotify: it works on every filesystem a ConfigMap or a bind
mount gives, at the price of reading a few small files per interval. The baseline is taken
before the bundle is built, so a change made while the gateway starts is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from gateway.bundle.reload import Reloader
from gateway.config import Settings
from gateway.core.errors import AuditUnavailable, GatewayError

log = logging.getLogger("toolgate")
Fingerprint = frozenset[tuple[str, str]]


def watched(settings: Settings) -> list[Path]:
    """The paths a reload reads: an OPA server's policies are not the gateway's."""
    if settings.policy.engine == "opa":
        return list(settings.tool_specs)
    return [*settings.tool_specs, *settings.policies]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """What a change to any file under `paths` changes. Symlinked directories are followed
    (a ConfigMap mounts its files through `..data`)."""
    seen: set[tuple[str, str]] = set()
    for root in paths:
        files = [Path(directory) / name
                 for directory, _, names in os.walk(root, followlinks=True) for name in names]
        for file in files or [root]:
            with contextlib.suppress(OSError):   # gone or unreadable: as if absent
                seen.add((str(file), hashlib.sha256(file.read_bytes()).hexdigest()))
    return frozenset(seen)


async def watch(reloader: Reloader, paths: list[Path], interval_s: float,
                baseline: Fingerprint) -> None:
    """Run until cancelled; nothing but cancellation ends it."""
    last = baseline
    while True:
        await asyncio.sleep(interval_s)
        try:
            last = await _step(reloader, paths, interval_s, last)
        except Exception:   # the watch must outlive any one failure
            log.exception("file watch failed; watching on")


async def _step(reloader: Reloader, paths: list[Path], interval_s: float,
                last: Fingerprint) -> Fingerprint:
    """One look: the fingerprint the next look compares with."""
    now = await asyncio.to_thread(fingerprint, paths)
    if now == last:
        return last
    await asyncio.sleep(interval_s)   # let the writer finish
    settled = await asyncio.to_thread(fingerprint, paths)
    if settled != now:
        return last                   # still changing: look again next time
    log.info("policy or spec files changed: reloading")
    try:
        await reloader.reload("watch")
    except AuditUnavailable:
        return last                   # nothing changed and nothing was recorded: again
    except GatewayError:
        pass                          # refused: recorded and logged already
    return settled
