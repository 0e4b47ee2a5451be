"""Unauthenticated refusals on the admin port: rate-limited per client, and audited as one
aggregate record per window instead of one record each.

Anyone who can reach the admin port can send requests without a valid token. Writing a
full audit record for each let a client fill the audit volume (7.9k records/s measured)
and take the gateway down with `audit_unavailable`. So each client (by peer address) gets
a token bucket of `RATE` refusals per second (burst `BURST`); past it the answer is 429
`rate_limited`. Every refusal is counted; once per `WINDOW_S` one `admin_refusals` record
says how many there were, per client and code (the `TOP_CLIENTS` busiest), with the first
`SAMPLE` of the window as examples. A refusal of a caller with a valid token (a wrong scope,
a self-approval) is still recorded on its own: it names an identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway import tasks
from gateway.audit import records
from gateway.audit.log import AuditLog
from gateway.core.canonical import rfc3339
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError

log = logging.getLogger("toolgate")
RATE = 10.0          # refusals a client may cause per second, sustained
BURST = 20.0
WINDOW_S = 60.0
SAMPLE = 5
TOP_CLIENTS = 20
MAX_CLIENTS = 10_000  # buckets kept; the least recently seen go first


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Window:
    start: float
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    sample: list[dict[str, Any]] = field(default_factory=list)
    limited: int = 0


class RefusalLedger:
    def __init__(self, audit: AuditLog, clock: Clock) -> None:
        self._audit = audit
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._window = _Window(clock.time())
        self._task: asyncio.Task[None] | None = None

    def allow(self, client: str) -> bool:
        """Whether `client` may be refused once more (else it is answered 429)."""
        now = self._clock.monotonic()
        bucket = self._buckets.pop(client, None) or _Bucket(BURST, now)
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.at) * RATE)
        bucket.at = now
        self._buckets[client] = bucket
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            self._window.limited += 1
            return False
        bucket.tokens -= 1
        return True

    def count(self, client: str, code: str, path: str) -> None:
        window = self._window
        window.counts[(client, code)] += 1
        if len(window.sample) < SAMPLE:
            window.sample.append({"at": rfc3339(self._clock.time()), "client": client,
                                  "code": code, "path": path[:200]})

    def flush(self) -> None:
        """Write the window's record, if anything was refused, and start a new window."""
        window, now = self._window, self._clock.time()
        self._window = _Window(now)
        if not window.counts:
            return
        by_client: Counter[str] = Counter()
        for (client, _), n in window.counts.items():
            by_client[client] += n
        top = {client for client, _ in by_client.most_common(TOP_CLIENTS)}
        counts = [{"client": client, "code": code, "count": n}
                  for (client, code), n in sorted(window.counts.items())
                  if client in top]
        try:
            self._audit.write("admin_refusals", records.admin_refusals(
                since=window.start, until=now, total=sum(window.counts.values()),
                rate_limited=window.limited, clients=len(by_client), counts=counts,
                sample=window.sample))
        except GatewayError:
            log.exception("the admin refusals of the last window could not be recorded")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_S)
            self.flush()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin refusals")

    async def close(self) -> None:
        await tasks.stop(self._task)
        self.flush()
