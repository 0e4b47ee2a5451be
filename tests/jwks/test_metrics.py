"""`toolgate_jwks_last_success_timestamp_seconds`, the metric to alert on while the gateway
keeps serving with old keys: the README's rule (`time() - metric > 3 * jwks_refresh_s`)
evaluated here on the clock the source sets it with."""

from __future__ import annotations

import pytest

from gateway.devtokens import DevKey
from gateway.jwks import JwksFetchError
from tests.jwks.idp import FakeIdp, jwks
from tests.jwks.test_source import MISS_S, REFRESH_S, Keys
from tests.support import FakeClock

LAST_SUCCESS = "toolgate_jwks_last_success_timestamp_seconds"


@pytest.fixture(scope="module")
def key_a() -> DevKey:
    return DevKey.generate(kid="key-a")


@pytest.fixture(scope="module")
def key_b() -> DevKey:
    return DevKey.generate(kid="key-b")


async def test_the_last_success_timestamp_is_the_metric_to_alert_on(
        key_a: DevKey, key_b: DevKey, clock: FakeClock) -> None:
    idp = FakeIdp(JwksFetchError("answered 503"))
    keys = Keys(idp, clock)

    def last_success() -> float | None:
        return keys.registry.get_sample_value(LAST_SUCCESS)

    def alert() -> bool:
        value = last_success()
        assert value is not None
        return clock.time() - value > 3 * REFRESH_S

    # Present (0) before any usable answer: the rule fires, rather than seeing no data.
    assert last_success() == 0.0
    await keys.source.start()
    try:
        assert last_success() == 0.0
        assert alert()
        idp.document = jwks(key_a)
        clock.advance(MISS_S)
        await keys.source.refresh("refresh")
        assert last_success() == clock.time()
        assert not alert()
        # Failures never move it: it fires once 3 intervals pass without a usable answer.
        idp.down()
        clock.advance(3 * REFRESH_S)
        await keys.source.refresh("refresh")
        assert not alert()
        clock.advance(1)
        await keys.source.refresh("refresh")
        assert alert()
        # Every usable answer moves it: a kid-miss fetch, a refresh with the keys unchanged.
        idp.document = jwks(key_a, key_b)
        await keys.source.refresh_for_miss()
        assert last_success() == clock.time()
        clock.advance(REFRESH_S)
        await keys.source.refresh("refresh")
        assert last_success() == clock.time()
        assert keys.fetches("refresh") == 2
    finally:
        await keys.source.close()
