"""The optional file watch (`policy.watch_ms`): a reload when the spec or policy files change.

Every `watch_ms` the watch takes a fingerprint of the files under `tool_specs` and
`policies` (path, size, modification time, inode). When it changes, it waits one more
interval for the change to settle (an editor or `kubectl cp` writes in steps, a ConfigMap
swaps a symlink), then asks the `Reloader` — the same path as SIGHUP and the API, so a
broken change is refused, recorded and the old bundle keeps serving. Polling rather than
inotify: it works on every filesystem a ConfigMap or a bind mount gives, at the price of a
few `stat` calls per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from gateway.bundle.reload import Reloader
from gateway.core.errors import GatewayError

log = logging.getLogger("toolgate")
Fingerprint = frozenset[tuple[str, int, int, int]]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """What a change to any file under `paths` changes (links followed, as loading does)."""
    seen: set[tuple[str, int, int, int]] = set()
    for root in paths:
        files = [root] if not root.is_dir() else [
            Path(directory) / name
            for directory, _, names in os.walk(root, followlinks=True) for name in names]
        for file in files:
            with contextlib.suppress(OSError):   # gone between the listing and the stat
                st = file.stat()
                seen.add((str(file), st.st_size, st.st_mtime_ns, st.st_ino))
    return frozenset(seen)


async def watch(reloader: Reloader, paths: list[Path], interval_s: float) -> None:
    """Run until cancelled."""
    last = await asyncio.to_thread(fingerprint, paths)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(fingerprint, paths)
        if now == last:
            continue
        await asyncio.sleep(interval_s)   # let the writer finish
        settled = await asyncio.to_thread(fingerprint, paths)
        if settled != now:
            continue                      # still changing: look again next time
        last = settled
        log.info("policy or spec files changed: reloading")
        with contextlib.suppress(GatewayError):   # refused: recorded and logged already
            await reloader.reload("watch")
