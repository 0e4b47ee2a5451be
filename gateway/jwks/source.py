"""`RemoteKeys`: the key set of `auth.jwks_url`, kept current while the gateway runs.

- At start, one fetch (bounded by `jwks_timeout_ms`); the gateway starts whether or not it
  succeeds. Until one does, `current` is empty: every token is refused (401
  `unauthenticated`, "no verification keys loaded yet") and `/readyz` is unready, naming
  `auth.jwks_url` and the last error.
- In the background, a fetch every `jwks_refresh_s` after the last success (a kid-miss
  fetch counts: the set is never older than that). After a failure, retries back off from
  1 s, doubling, up to `min(jwks_miss_refresh_s, jwks_refresh_s)`, however many failures
  in a row. `Cache-Control` is ignored: the operator's interval is the one that holds.
- The background loop outlives its own bugs: an unexpected exception in one turn (or a
  `CancelledError` a fetch raises without being cancelled) is logged by its type alone and
  the loop goes on after the retry cap. Only `close` stops it; `close` never raises for
  what the loop or a fetch ended with, and always closes the session.
- A token naming a `kid` the set does not hold calls `refresh_for_miss`: if a fetch is in
  flight it waits for that one; otherwise it starts one, unless a kid-miss fetch started
  less than `jwks_miss_refresh_s` ago — then it returns at once and the token is refused.
  Whoever holds tokens with made-up kids can cause at most one fetch per interval.
- SECURITY: a failed or refused fetch never changes `current`: the last good set stays,
  however old, and the failure is logged, counted and shown by `/readyz`. A set is
  replaced only by another usable set (`gateway.jwks.document`). Keeping old keys is the
  lesser harm: failing closed would take every agent down whenever the IdP is. But an old
  set still trusts keys the IdP has retired, so once the last success is older than
  `STALE_AFTER_REFRESHES` (3) times `jwks_refresh_s` the set is *stale*: an ERROR is logged
  once per `jwks_refresh_s` while it stays so, `/readyz` shows `"stale": true` beside
  `age_s` (and stays ready), and `toolgate_jwks_last_success_timestamp_seconds` — the
  metric to alert on — stops moving (it is 0 until the first success).
- One fetch at a time: every trigger (start, background, kid miss) joins the fetch in
  flight. Waiters are shielded: a request that goes away does not cancel the fetch.
Verification never awaits this object: it reads `current`, one attribute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.config import AuthSettings
from gateway.core.clock import Clock
from gateway.jwks.document import JwksInvalid, parse_jwks
from gateway.jwks.fetch import JwksFetchError, fetch_jwks, new_session
from gateway.jwks.metrics import JwksMetrics
from gateway.jwks.url import shown
from gateway.keys import KeySet

log = logging.getLogger("toolgate")
EMPTY = KeySet((), kid_required=True)
FIRST_RETRY_S = 1.0
# 2 ** 32 s is past any retry cap the config allows; without a bound, 2.0 ** n overflows
# after ~1,025 failures in a row (an IdP down for a few hours) and would end the loop.
MAX_DOUBLINGS = 32
STALE_AFTER_REFRESHES = 3

Fetch = Callable[[], Awaitable[bytes]]
Sleep = Callable[[float], Awaitable[object]]


class RemoteKeys:
    """The `KeySource` of `auth.jwks_url` (see the module's docstring). `fetch` and
    `sleep` are injectable (tests); by default GET over an own session, `asyncio.sleep`."""

    refreshable = True

    def __init__(self, settings: AuthSettings, clock: Clock, *,
                 registry: CollectorRegistry | None = None, fetch: Fetch | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        assert settings.jwks_url is not None
        self.current: KeySet = EMPTY
        self._url = settings.jwks_url
        self._allowed = frozenset(settings.algorithms)
        self._refresh_s = settings.jwks_refresh_s
        self._miss_s = settings.jwks_miss_refresh_s
        self._retry_cap_s = min(self._miss_s, self._refresh_s)
        self._timeout_s = settings.jwks_timeout_s
        self._clock = clock
        self._metrics = JwksMetrics(registry if registry is not None else CollectorRegistry())
        self._fetch = fetch
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._started: float | None = None         # monotonic
        self._last_success: float | None = None    # monotonic
        self._stale_logged: float | None = None    # monotonic: the last ERROR saying so
        self._last_failure = 0.0                   # monotonic
        self._last_miss: float | None = None       # monotonic start of the last miss fetch
        self._failures = 0                         # in a row
        self._last_error: str | None = None

    async def start(self) -> None:
        """Fetch once, then keep refreshing in the background until `close`."""
        if self._fetch is None:
            session = self._session = new_session()
            self._fetch = lambda: fetch_jwks(session, self._url, self._timeout_s)
        self._started = self._clock.monotonic()
        await self.refresh("start")
        self._loop = asyncio.create_task(self._run(), name="jwks-refresh")
        self._loop.add_done_callback(self._loop_ended)

    async def close(self) -> None:
        """Stop the loop and the fetch in flight, then close the session. Never raises for
        what those tasks ended with (`_loop_ended` has logged it)."""
        try:
            tasks = [t for t in (self._loop, self._inflight) if t is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)   # returns when they end, raises nothing of theirs
            for task in tasks:
                if not task.cancelled():
                    task.exception()        # retrieved: asyncio would log it again at exit
        finally:
            if self._session is not None:
                await self._session.close()

    async def refresh(self, trigger: str) -> None:
        """Fetch now, or wait for the fetch in flight. Never raises for a failed fetch."""
        if self._inflight is None:
            task = asyncio.create_task(self._fetch_and_swap(trigger), name="jwks-fetch")
            self._inflight = task
            task.add_done_callback(self._done)
        await asyncio.shield(self._inflight)

    async def refresh_for_miss(self) -> None:
        """For a token whose `kid` is not in `current`: join the fetch in flight, or start
        one if none started for a miss in the last `jwks_miss_refresh_s`; else return at
        once (the caller refuses the token)."""
        if self._inflight is not None:
            self._metrics.misses.labels("joined").inc()
            await asyncio.shield(self._inflight)
            return
        now = self._clock.monotonic()
        # SECURITY: tokens with made-up kids must not make the gateway hammer the IdP.
        if self._last_miss is not None and now - self._last_miss < self._miss_s:
            self._metrics.misses.labels("rate_limited").inc()
            return
        self._last_miss = now
        self._metrics.misses.labels("fetched").inc()
        await self.refresh("kid_miss")

    def next_delay(self) -> float:
        """Seconds until the background's next fetch is due."""
        now = self._clock.monotonic()
        if self._failures:
            doublings = min(self._failures - 1, MAX_DOUBLINGS)
            backoff = min(FIRST_RETRY_S * 2.0 ** doublings, self._retry_cap_s)
            due = self._last_failure + backoff
        else:
            due = (now if self._last_success is None else self._last_success) + self._refresh_s
        return max(0.0, due - now)

    def problem(self) -> str | None:
        if self.current.keys:
            return None
        return (f"auth.jwks_url {shown(self._url)}: no verification keys yet "
                f"({self._last_error or 'not fetched yet'})")

    def status(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        age = None if self._last_success is None else now - self._last_success
        return {"source": "jwks_url", "keys": len(self.current.keys),
                "revision": self.current.revision,
                "age_s": None if age is None else round(age, 1),
                "stale": self._stale_for(now) is not None,
                "failures": self._failures, "last_error": self._last_error}

    async def _run(self) -> None:
        while True:
            try:
                await self._turn()
            except Exception as exc:  # noqa: BLE001 (a bug must not stop the refreshes)
                # Only the type, no traceback (hence not `log.exception`, TRY400): an
                # exception's text could quote the document.
                log.error("auth.jwks_url %s: the background refresh failed unexpectedly "  # noqa: TRY400
                          "(%s); trying again in %g s", shown(self._url), type(exc).__name__,
                          self._retry_cap_s)
                await self._sleep(self._retry_cap_s)

    async def _turn(self) -> None:
        delay = self.next_delay()
        if delay > 0:
            await self._sleep(delay)
            return   # a kid-miss fetch meanwhile may have moved the next one on
        await self.refresh("refresh")

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        # Only what `_run` cannot catch (a BaseException) ends it before `close`.
        if not task.cancelled() and task.exception() is not None:
            log.error("auth.jwks_url %s: the background refresh stopped (%s); the keys are "
                      "no longer refreshed", shown(self._url),
                      type(task.exception()).__name__)

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_and_swap(self, trigger: str) -> None:
        assert self._fetch is not None, "start() first"
        try:
            keyset, ignored = parse_jwks(await self._fetch(), self._allowed)
        except (JwksFetchError, JwksInvalid) as exc:
            self._failed(trigger, str(exc))
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise                        # `close`: this fetch is to stop
            # Raised by a library, not by a cancel: a failed fetch, not the end of the loop
            # (nor a cancel of the requests waiting for it).
            self._failed(trigger, "unexpected CancelledError")
            return
        except Exception as exc:  # noqa: BLE001 (a bug must not stop the refreshes)
            # Only the type: an exception's text could quote the document.
            self._failed(trigger, f"unexpected {type(exc).__name__}")
            return
        self._succeeded(trigger, keyset, ignored)

    def _succeeded(self, trigger: str, keyset: KeySet, ignored: int) -> None:
        self._metrics.fetches.labels(trigger, "ok").inc()
        self._metrics.last_success.set(self._clock.time())
        self._last_success = self._clock.monotonic()
        if keyset.revision != self.current.revision:
            # Counts and revisions only: the document is never logged.
            log.info("auth.jwks_url %s: keys in use: %d (revision %s, was %s)%s",
                     shown(self._url), len(keyset.keys), keyset.revision,
                     self.current.revision or "none",
                     f"; entries ignored: {ignored}" if ignored else "")
            self.current = keyset
        elif self._failures:
            log.info("auth.jwks_url %s: fetched again after %d failed fetches; keys "
                     "unchanged", shown(self._url), self._failures)
        self._failures = 0
        self._last_error = None
        self._stale_logged = None

    def _failed(self, trigger: str, reason: str) -> None:
        self._metrics.fetches.labels(trigger, "error").inc()
        self._failures += 1
        self._last_failure = self._clock.monotonic()
        self._last_error = reason
        if self.current.keys:
            age = self._last_failure - (self._last_success or self._last_failure)
            log.warning("auth.jwks_url %s: %s fetch failed: %s; keeping the last good keys "
                        "(%d, revision %s, fetched %.0f s ago)", shown(self._url), trigger,
                        reason, len(self.current.keys), self.current.revision, age)
        else:
            log.warning("auth.jwks_url %s: %s fetch failed: %s; no keys yet: every token "
                        "is refused (401) and /readyz is unready until a fetch succeeds",
                        shown(self._url), trigger, reason)
        self._log_if_stale(self._last_failure)

    def _stale_for(self, now: float) -> float | None:
        """Seconds since the last success (since the start, before one) when that is more
        than `STALE_AFTER_REFRESHES` intervals; else None."""
        since = self._last_success if self._last_success is not None else self._started
        if since is None or now - since <= STALE_AFTER_REFRESHES * self._refresh_s:
            return None
        return now - since

    def _log_if_stale(self, now: float) -> None:
        # Retries come at least once per interval while the IdP fails, so this runs often
        # enough; the ERROR itself comes once per interval, not once per retry.
        age = self._stale_for(now)
        if age is None or (self._stale_logged is not None
                           and now - self._stale_logged < self._refresh_s):
            return
        self._stale_logged = now
        if self.current.keys:
            log.error("auth.jwks_url %s: no usable key set for %.0f s (more than %d x "
                      "auth.jwks_refresh_s); still verifying with the last good keys "
                      "(revision %s), which trust any key the IdP retired since and no key "
                      "it added", shown(self._url), age, STALE_AFTER_REFRESHES,
                      self.current.revision)
        else:
            log.error("auth.jwks_url %s: no usable key set for %.0f s since start (more "
                      "than %d x auth.jwks_refresh_s); every token is refused (401)",
                      shown(self._url), age, STALE_AFTER_REFRESHES)
