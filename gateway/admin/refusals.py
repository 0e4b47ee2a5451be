"""Refusals of callers who are not approvers, on the admin port: rate-limited per client,
and audited as one aggregate record per window instead of one record each.

Anyone who can reach the admin port can send requests without a valid token, and the agent
(which shares the pod's network) can send them with its own token, which lacks the approver
scope. Writing a full audit record for each let a client fill the audit volume (7.9k
records/s measured) and take the gateway down with `audit_unavailable`. So each client (by
peer address) gets a token bucket of `RATE` refusals per second (burst `BURST`); past it the
answer is 429 `rate_limited`. Every refusal is counted; once per `WINDOW_S` one
`admin_refusals` record says how many there were, per client, identity (the token's `sub`
when it was valid) and code, the `MAX_COUNTS` largest, with the first `SAMPLE` of the
window as examples. At most `MAX_CLIENTS` clients are tracked at a time; past that,
the least recently seen are forgotten and new ones are counted under "other".

A refusal of a caller who holds the approver scope (a self-approval, a wrong role, a call
no longer pending) is not handled here: it is an `approval` record of its own.
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
MAX_COUNTS = 50      # the largest (client, sub, code) counts kept in a record
MAX_CLIENTS = 10_000  # buckets kept, and clients counted in one window
MAX_SUB = 200        # characters of an identity kept in a count or a sample


@dataclass
class _Bucket:
    tokens: float
    at: float


OTHER = "other"       # the client of counts past MAX_CLIENTS in one window


@dataclass
class _Window:
    start: float
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # client, sub, code
    clients: set[str] = field(default_factory=set)
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

    def count(self, client: str, code: str, path: str, sub: str | None = None) -> None:
        """One refusal of `client` (and of `sub`, when its token was valid)."""
        window = self._window
        if client not in window.clients:
            if len(window.clients) >= MAX_CLIENTS:
                client, sub = OTHER, None
            window.clients.add(client)
        window.counts[(client, (sub or "")[:MAX_SUB], code)] += 1
        if len(window.sample) < SAMPLE:
            window.sample.append({"at": rfc3339(self._clock.time()), "client": client,
                                  "sub": sub[:MAX_SUB] if sub else None, "code": code,
                                  "path": path[:200]})

    def flush(self) -> None:
        """Write the window's record, if anything was refused, and start a new window."""
        window, now = self._window, self._clock.time()
        self._window = _Window(now)
        if not window.counts:
            return
        biggest = sorted(window.counts.most_common(MAX_COUNTS),
                         key=lambda item: (-item[1], item[0]))
        counts = [{"client": client, "sub": sub or None, "code": code, "count": n}
                  for (client, sub, code), n in biggest]
        try:
            self._audit.write("admin_refusals", records.admin_refusals(
                since=window.start, until=now, total=sum(window.counts.values()),
                rate_limited=window.limited, clients=len(window.clients), counts=counts,
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
