"""`RemoteKeys`: the cache of `auth.jwks_url` — start, background refresh, kid-miss fetches
(coalesced, rate-limited), the last good set kept — with the clock in the test's hands and
the IdP's answers from `FakeIdp`. Nothing here sleeps: a fetch held in flight waits on an
event, and the refresh loop's sleep is replaced by one that moves the clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from prometheus_client import CollectorRegistry

from gateway.auth import KeyMiss, TokenVerifier
from gateway.config import AuthSettings
from gateway.core.errors import Unauthenticated
from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.jwks import JwksFetchError, RemoteKeys
from gateway.jwks.url import shown
from tests.jwks.idp import FakeIdp, idp_server, jwks
from tests.support import FakeClock

URL = "https://idp.example.com/.well-known/jwks.json"
REFRESH_S = 300.0
MISS_S = 30.0


@pytest.fixture(scope="module")
def key_a() -> DevKey:
    return DevKey.generate(kid="key-a")


@pytest.fixture(scope="module")
def key_b() -> DevKey:
    return DevKey.generate(kid="key-b")


def settings(**changes: Any) -> AuthSettings:
    fields: dict[str, Any] = {"issuer": DEV_ISSUER, "audience": DEV_AUDIENCE,
                              "algorithms": ("RS256",), "jwks_url": URL,
                              "jwks_refresh_s": REFRESH_S, "jwks_miss_refresh_s": MISS_S}
    return AuthSettings(**{**fields, **changes})


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class Keys:
    """A started `RemoteKeys` on a `FakeIdp`, its registry and a verifier over it."""

    def __init__(self, idp: FakeIdp, clock: FakeClock, **changes: Any) -> None:
        self.idp = idp
        self.registry = CollectorRegistry()
        self.source = RemoteKeys(settings(**changes), clock, registry=self.registry,
                                 fetch=idp.fetch, sleep=self._never)
        self.verifier = TokenVerifier(settings(**changes), self.source)

    @staticmethod
    async def _never(_: float) -> None:
        await asyncio.Event().wait()   # the background loop stays put unless a test runs it

    def fetches(self, trigger: str, result: str = "ok") -> float:
        return sample(self.registry, "toolgate_jwks_fetches_total", trigger=trigger,
                      result=result)

    def misses(self, outcome: str) -> float:
        return sample(self.registry, "toolgate_jwks_kid_misses_total", outcome=outcome)


@contextlib.asynccontextmanager
async def started(idp: FakeIdp, clock: FakeClock, **changes: Any) -> AsyncIterator[Keys]:
    """The key source of `idp`, started; closed at the end of the block."""
    keys = Keys(idp, clock, **changes)
    await keys.source.start()
    try:
        yield keys
    finally:
        await keys.source.close()


async def verify(keys: Keys, token: str) -> str:
    """The token's `sub` as the agent port gets it: waiting for a kid-miss fetch."""
    try:
        return keys.verifier.verify(token).sub
    except KeyMiss as miss:
        return (await miss.retry()).sub


# ---- start -------------------------------------------------------------------------------

async def test_the_set_is_fetched_at_start(key_a: DevKey, clock: FakeClock) -> None:
    async with started(FakeIdp(jwks(key_a)), clock) as keys:
        assert [k.kid for k in keys.source.current.keys] == ["key-a"]
        assert keys.source.problem() is None
        status = keys.source.status()
        assert status["source"] == "jwks_url"
        assert status["keys"] == 1
        assert status["failures"] == 0
        assert status["last_error"] is None
        assert keys.fetches("start") == 1
        assert keys.verifier.verify(key_a.token("svc-a")).sub == "svc-a"
        assert sample(keys.registry, "toolgate_jwks_last_success_timestamp_seconds") \
            == clock.time()


async def test_no_keys_before_the_first_fetch_refuses_and_is_unready(
        key_a: DevKey, clock: FakeClock) -> None:
    idp = FakeIdp(JwksFetchError("answered 503"))
    async with started(idp, clock) as keys:
        assert keys.source.current.keys == ()
        problem = keys.source.problem()
        assert problem is not None
        assert "auth.jwks_url" in problem
        assert "no verification keys yet (answered 503)" in problem
        assert keys.fetches("start", "error") == 1
        token = key_a.token("svc-a")
        # The token's kid is unknown: one miss fetch (the start was not one), which fails.
        with pytest.raises(KeyMiss) as info:
            keys.verifier.verify(token)
        assert info.value.status == 401
        assert info.value.message == "no verification keys loaded yet"
        with pytest.raises(Unauthenticated, match="no verification keys loaded yet") as final:
            await info.value.retry()
        assert not isinstance(final.value, KeyMiss)
        assert idp.calls == 2
        # The IdP comes back: the next miss (after the interval) loads the set.
        idp.document = jwks(key_a)
        clock.advance(MISS_S)
        assert await verify(keys, token) == "svc-a"
        assert keys.source.problem() is None


async def test_a_token_must_name_its_key_even_in_a_set_of_one(key_a: DevKey,
                                                              clock: FakeClock) -> None:
    """A file's lone key verifies a token without `kid`; a URL's set changes under the
    gateway, so "the only key" would mean another key tomorrow."""
    async with started(FakeIdp(jwks(key_a)), clock) as keys:
        token = jwt.encode({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "svc",
                            "exp": time.time() + 600}, key_a.private_pem, algorithm="RS256")
        with pytest.raises(Unauthenticated, match="token has no key id") as info:
            keys.verifier.verify(token)
        assert not isinstance(info.value, KeyMiss)


# ---- kid misses --------------------------------------------------------------------------

async def test_a_new_kid_is_fetched_and_verified(key_a: DevKey, key_b: DevKey,
                                                 clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.document = jwks(key_a, key_b)   # the IdP rotates
        assert await verify(keys, key_b.token("svc-b")) == "svc-b"
        assert idp.calls == 2
        assert keys.fetches("kid_miss") == 1
        assert keys.misses("fetched") == 1
        assert keys.verifier.verify(key_a.token("svc-a")).sub == "svc-a"


async def test_concurrent_misses_share_one_fetch(key_a: DevKey, key_b: DevKey,
                                                 clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.document = jwks(key_a, key_b)
        idp.gate = asyncio.Event()
        idp.arrived.clear()
        tokens = [key_b.token(f"svc-{i}") for i in range(20)]
        waiting = [asyncio.create_task(verify(keys, t)) for t in tokens]
        await idp.arrived.wait()          # the first miss's fetch is in flight
        idp.gate.set()
        assert await asyncio.gather(*waiting) == [f"svc-{i}" for i in range(20)]
        assert idp.calls == 2             # the start, and one fetch for twenty tokens
        assert keys.misses("fetched") == 1
        assert keys.misses("joined") == 19


async def test_misses_are_rate_limited(key_a: DevKey, clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        strangers = [DevKey.generate(kid=f"made-up-{i}") for i in range(3)]
        for stranger in strangers:
            with pytest.raises(Unauthenticated, match="unknown key id") as info:
                await verify(keys, stranger.token("mallory"))
            assert info.value.status == 401
        assert idp.calls == 2             # the start, and one miss fetch: not three
        assert keys.misses("fetched") == 1
        assert keys.misses("rate_limited") == 2
        clock.advance(MISS_S - 1)
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verify(keys, strangers[0].token("mallory"))
        assert idp.calls == 2
        clock.advance(1)                  # a whole interval since the last miss fetch
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verify(keys, strangers[0].token("mallory"))
        assert idp.calls == 3


async def test_a_miss_joins_a_background_fetch_in_flight(key_a: DevKey, key_b: DevKey,
                                                         clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.document = jwks(key_b)
        idp.gate = asyncio.Event()
        idp.arrived.clear()
        background = asyncio.create_task(keys.source.refresh("refresh"))
        await idp.arrived.wait()
        waiting = asyncio.create_task(verify(keys, key_b.token("svc-b")))
        await asyncio.sleep(0)            # one turn: the new task runs up to its wait
        assert keys.misses("joined") == 1
        idp.gate.set()
        assert await waiting == "svc-b"
        await background
        assert idp.calls == 2
        assert keys.misses("joined") == 1
        assert keys.misses("fetched") == 0   # its budget is left for a real rotation


async def test_tokens_that_would_fail_anyway_cause_no_fetch(key_a: DevKey,
                                                            clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        stranger = DevKey.generate(kid="made-up")
        for token in (stranger.token("m", issuer="https://evil.example.com"),
                      stranger.token("m", ttl_s=-3600)):
            with pytest.raises(Unauthenticated, match="unknown key id") as info:
                keys.verifier.verify(token)
            assert not isinstance(info.value, KeyMiss)
        assert idp.calls == 1


async def test_a_waiter_that_goes_away_does_not_cancel_the_fetch(
        key_a: DevKey, key_b: DevKey, clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.document = jwks(key_a, key_b)
        idp.gate = asyncio.Event()
        idp.arrived.clear()
        leaving = asyncio.create_task(verify(keys, key_b.token("svc-b")))
        await idp.arrived.wait()
        leaving.cancel()                  # the client hung up
        with pytest.raises(asyncio.CancelledError):
            await leaving
        idp.gate.set()
        assert await verify(keys, key_b.token("svc-b2")) == "svc-b2"
        assert idp.calls == 2


# ---- the last good set -------------------------------------------------------------------

@pytest.mark.parametrize("answer", [
    JwksFetchError("no answer within 3 s"), b"not json", b'{"keys": []}', b"{}",
    b'{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB"}]}',
], ids=["down", "not-json", "empty", "no-keys", "unusable"])
async def test_a_failed_refresh_keeps_the_last_good_set(
        key_a: DevKey, clock: FakeClock, answer: Exception | bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        before = keys.source.current
        token = key_a.token("svc-a")
        idp.document = answer
        clock.advance(REFRESH_S)
        with caplog.at_level(logging.WARNING, logger="toolgate"):
            await keys.source.refresh("refresh")
        assert keys.source.current is before
        assert keys.verifier.verify(token).sub == "svc-a"
        assert keys.source.problem() is None      # still ready: it has keys
        status = keys.source.status()
        assert status["failures"] == 1
        assert status["last_error"]
        assert keys.fetches("refresh", "error") == 1
        assert "keeping the last good keys (1, revision" in caplog.text


async def test_a_removed_key_stops_its_cached_tokens(key_a: DevKey, key_b: DevKey,
                                                     clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a, key_b))
    async with started(idp, clock) as keys:
        token = key_a.token("svc-a")
        assert keys.verifier.verify(token).sub == "svc-a"        # now cached
        idp.document = jwks(key_b)                                # key A retired
        clock.advance(REFRESH_S)
        await keys.source.refresh("refresh")
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verify(keys, token)
        assert keys.verifier.verify(key_b.token("svc-b")).sub == "svc-b"


async def test_an_unchanged_set_keeps_the_token_cache(key_a: DevKey,
                                                      clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        before = keys.source.current
        await keys.source.refresh("refresh")
        assert keys.source.current is before    # same revision: the same object


# ---- when the background fetches --------------------------------------------------------

async def test_next_delay_after_success_failures_and_a_miss(key_a: DevKey, key_b: DevKey,
                                                            clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        assert keys.source.next_delay() == REFRESH_S
        clock.advance(100)
        assert keys.source.next_delay() == REFRESH_S - 100
        idp.document = jwks(key_a, key_b)
        await verify(keys, key_b.token("svc-b"))       # a miss fetch refreshes too
        assert keys.source.next_delay() == REFRESH_S
        idp.down()
        delays = []
        for _ in range(7):
            await keys.source.refresh("refresh")
            delays.append(keys.source.next_delay())
        # 1 s, doubling, capped at the miss interval (30 s, below the refresh interval)
        assert delays == [1, 2, 4, 8, 16, 30, 30]
        idp.document = jwks(key_b)
        await keys.source.refresh("refresh")
        assert keys.source.next_delay() == REFRESH_S
        assert keys.source.status()["failures"] == 0


async def test_the_loop_fetches_when_due(key_a: DevKey, key_b: DevKey,
                                         clock: FakeClock) -> None:
    """The background loop itself, with a sleep that moves the clock instead of waiting."""
    idp = FakeIdp(jwks(key_a))
    slept: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        if len(slept) == 4:
            enough.set()
        await asyncio.sleep(0)

    source = RemoteKeys(settings(), clock, fetch=idp.fetch, sleep=sleep)
    # The start gets key A; then the IdP is down twice, then serves key B.
    idp.script = [jwks(key_a), JwksFetchError("down"), JwksFetchError("down"), jwks(key_b)]
    await source.start()
    try:
        await enough.wait()
    finally:
        await source.close()
    # the refresh interval, the retries after one and two failures, the interval again
    assert slept[:4] == [REFRESH_S, 1, 2, REFRESH_S]
    assert [k.kid for k in source.current.keys] == ["key-b"]


async def test_close_stops_the_loop_and_a_fetch_in_flight(key_a: DevKey,
                                                          clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.gate = asyncio.Event()
        idp.arrived.clear()
        pending = asyncio.create_task(keys.source.refresh("refresh"))
        await idp.arrived.wait()
        await keys.source.close()
        with pytest.raises(asyncio.CancelledError):
            await pending
    assert [t.get_name() for t in asyncio.all_tasks()
            if t.get_name().startswith("jwks-")] == []


async def test_failures_are_logged_without_the_document(key_a: DevKey, clock: FakeClock,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    canary = "jwks-canary-7f3a"
    idp = FakeIdp(f'{{"keys": [{{"kty": "RSA", "kid": "{canary}", "n": 5}}]}}'.encode())
    with caplog.at_level(logging.INFO, logger="toolgate"):
        async with started(idp, clock) as keys:
            pass
    assert "no keys yet" in caplog.text
    assert canary not in caplog.text
    assert canary not in str(keys.source.problem())
    assert canary not in str(keys.source.status())


# ---- the loop outlives its bugs -----------------------------------------------------------

CANARY = "jwks-canary-91c2"


class Loop:
    """A `RemoteKeys` whose background loop runs, with a sleep that moves the clock at once
    (or raises the next of `raises`); `done` is set once `until(source)` holds after one."""

    def __init__(self, idp: FakeIdp, clock: FakeClock, until: Callable[[RemoteKeys], bool],
                 raises: tuple[BaseException, ...] = ()) -> None:
        self.slept: list[float] = []
        self.done = asyncio.Event()
        self.registry = CollectorRegistry()
        self.source = RemoteKeys(settings(), clock, registry=self.registry, fetch=idp.fetch,
                                 sleep=self.sleep)
        self._clock = clock
        self._until = until
        self._raises = list(raises)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self._raises:
            raise self._raises.pop(0)
        self._clock.advance(seconds)
        if self._until(self.source):
            self.done.set()
        await asyncio.sleep(0)

    async def run(self) -> None:
        """Start, wait until `until` holds, close. The deadline only turns a loop that died
        into a failure instead of a hang; a live loop gets there in milliseconds."""
        await self.source.start()
        try:
            async with asyncio.timeout(60):
                await self.done.wait()
        finally:
            await self.source.close()

    def fetches(self, trigger: str, result: str) -> float:
        return sample(self.registry, "toolgate_jwks_fetches_total", trigger=trigger,
                      result=result)


def holds_b(source: RemoteKeys) -> bool:
    return "key-b" in source.current.by_kid


async def test_the_retry_delay_stays_capped_after_thousands_of_failures(
        key_a: DevKey, clock: FakeClock) -> None:
    """2.0 ** (failures - 1) overflowed after ~1,025 failures in a row."""
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.down()
        for _ in range(2_000):
            await keys.source.refresh("refresh")
        assert keys.source.status()["failures"] == 2_000
        assert keys.source.next_delay() == MISS_S


async def test_the_loop_survives_thousands_of_failures(key_a: DevKey, key_b: DevKey,
                                                       clock: FakeClock,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """An IdP down for ~9 hours (1,100 retries 30 s apart), then back with a new key."""
    idp = FakeIdp(jwks(key_a))
    idp.script = [jwks(key_a), *[JwksFetchError("answered 503")] * 1_100, jwks(key_b)]
    loop = Loop(idp, clock, holds_b)
    with caplog.at_level(logging.WARNING, logger="toolgate"):
        await loop.run()
    assert loop.slept[:1_102] == [REFRESH_S, 1, 2, 4, 8, 16, *[MISS_S] * 1_095, REFRESH_S]
    assert loop.fetches("refresh", "error") == 1_100
    assert "unexpectedly" not in caplog.text


async def test_an_unexpected_exception_in_a_turn_is_logged_and_the_loop_goes_on(
        key_a: DevKey, key_b: DevKey, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    idp = FakeIdp(jwks(key_a))
    idp.script = [jwks(key_a), jwks(key_b)]
    loop = Loop(idp, clock, holds_b, raises=(RuntimeError(CANARY),))
    with caplog.at_level(logging.INFO, logger="toolgate"):
        await loop.run()
    # the sleep that raised, the back-off (the retry cap), the rest of the interval, and the
    # interval after the fetch that got key B
    assert loop.slept[:4] == [REFRESH_S, MISS_S, REFRESH_S - MISS_S, REFRESH_S]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"auth.jwks_url {URL}: the background refresh failed unexpectedly "
                      f"(RuntimeError); trying again in {MISS_S:g} s"]
    assert CANARY not in caplog.text    # the type only: an exception's text is not logged


@pytest.mark.parametrize("error", [RuntimeError(CANARY), asyncio.CancelledError(CANARY)],
                         ids=["RuntimeError", "CancelledError"])
async def test_a_fetch_that_raises_unexpectedly_is_a_failed_fetch(
        key_a: DevKey, key_b: DevKey, clock: FakeClock, error: BaseException,
        caplog: pytest.LogCaptureFixture) -> None:
    """A `CancelledError` no one asked for (a library's bug) must not end the loop as if
    `close` had been called."""
    idp = FakeIdp(jwks(key_a))
    idp.script = [jwks(key_a), error, jwks(key_b)]
    loop = Loop(idp, clock, holds_b)
    with caplog.at_level(logging.INFO, logger="toolgate"):
        await loop.run()
    assert loop.slept[:3] == [REFRESH_S, 1, REFRESH_S]
    assert loop.fetches("refresh", "error") == 1
    assert f"refresh fetch failed: unexpected {type(error).__name__}; keeping" in caplog.text
    assert CANARY not in caplog.text


async def test_a_fetch_that_raises_cancelled_does_not_cancel_its_waiters(
        key_a: DevKey, key_b: DevKey, clock: FakeClock) -> None:
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        idp.document = asyncio.CancelledError()
        # The agent's request gets its 401, not a cancel of its handler.
        with pytest.raises(Unauthenticated, match="unknown key id"):
            await verify(keys, key_b.token("svc-b"))
        assert keys.fetches("kid_miss", "error") == 1


async def test_close_never_raises_and_always_closes_the_session(
        key_a: DevKey, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A loop ended by what it cannot catch (a BaseException) is logged when it ends; `close`
    then stops what is left and closes the session without raising it."""

    class Escaped(BaseException):
        pass

    ended = asyncio.Event()

    async def sleep(_: float) -> None:
        ended.set()
        raise Escaped

    async with idp_server(jwks(key_a)) as idp:   # a real session, on loopback
        source = RemoteKeys(settings(jwks_url=idp.url), clock, sleep=sleep)
        with caplog.at_level(logging.INFO, logger="toolgate"):
            await source.start()
            await ended.wait()
            await source.close()
        assert [k.kid for k in source.current.keys] == ["key-a"]
        session = source._session   # what `close` must have closed
        assert session is not None
        assert session.closed
    assert f"auth.jwks_url {shown(idp.url)}: the background refresh stopped (Escaped)" \
        in caplog.text


# ---- a stale set -----------------------------------------------------------------------

def stale_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "no usable key set for" in r.getMessage()]


async def test_a_stale_set_is_kept_and_logged_once_per_interval(
        key_a: DevKey, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """The last good keys keep serving (an IdP outage must not take every agent down), but
    once the last success is older than 3 intervals an ERROR says so, once per interval."""
    idp = FakeIdp(jwks(key_a))
    async with started(idp, clock) as keys:
        token = key_a.token("svc-a")
        idp.down()
        caplog.set_level(logging.WARNING, logger="toolgate")

        async def retry_after(seconds: float) -> None:
            clock.advance(seconds)
            await keys.source.refresh("refresh")

        for _ in range(30):                  # 3 intervals, retried every 30 s: not yet
            await retry_after(MISS_S)
        assert stale_errors(caplog) == []
        assert keys.source.status()["stale"] is False
        await retry_after(1)                 # 901 s
        assert stale_errors(caplog) == [
            f"auth.jwks_url {URL}: no usable key set for 901 s (more than 3 x "
            f"auth.jwks_refresh_s); still verifying with the last good keys (revision "
            f"{keys.source.current.revision}), which trust any key the IdP retired since "
            "and no key it added"]
        for _ in range(9):                   # 270 s more: within the interval, no repeat
            await retry_after(MISS_S)
        await retry_after(MISS_S - 1)
        assert len(stale_errors(caplog)) == 1
        await retry_after(1)                 # one interval since the last ERROR
        assert len(stale_errors(caplog)) == 2
        assert "no usable key set for 1201 s" in stale_errors(caplog)[1]
        # Still serving, still ready; /readyz's `keys` says how stale.
        assert keys.verifier.verify(token).sub == "svc-a"
        assert keys.source.problem() is None
        status = keys.source.status()
        assert status["stale"] is True
        assert status["age_s"] == 1201.0
        # The IdP is back: fresh again, and the next failure is a warning only.
        idp.document = jwks(key_a)
        await retry_after(MISS_S)
        assert keys.source.status()["stale"] is False
        idp.down()
        await retry_after(REFRESH_S)
        assert len(stale_errors(caplog)) == 2


async def test_no_set_for_three_intervals_since_start_is_an_error(
        key_a: DevKey, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    idp = FakeIdp(JwksFetchError("answered 503"))
    async with started(idp, clock) as keys:
        caplog.set_level(logging.WARNING, logger="toolgate")
        clock.advance(3 * REFRESH_S)
        await keys.source.refresh("refresh")
        assert stale_errors(caplog) == []
        clock.advance(1)
        await keys.source.refresh("refresh")
        assert stale_errors(caplog) == [
            f"auth.jwks_url {URL}: no usable key set for 901 s since start (more than 3 x "
            "auth.jwks_refresh_s); every token is refused (401)"]
