"""The metrics of `auth.jwks_url` (`gateway.jwks.source.RemoteKeys` counts and sets them).

`toolgate_jwks_last_success_timestamp_seconds` is the one to alert on (the README's rule:
`time() - toolgate_jwks_last_success_timestamp_seconds > 3 * <jwks_refresh_s>`): the
gateway keeps verifying with its last good keys while the IdP fails, and stays ready, so
nothing else says the keys have stopped following the IdP.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class JwksMetrics:
    """`toolgate_jwks_fetches_total{trigger,result}`, `toolgate_jwks_kid_misses_total
    {outcome}` and `toolgate_jwks_last_success_timestamp_seconds` (the stalest worker's,
    under `--workers`), on the runtime's registry. The timestamp is the one to alert on:
    it moves on every usable answer, whatever the trigger and even when the keys are
    unchanged, never on a failure, and is 0 (present, not absent) before the first."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fetches = Counter("toolgate_jwks_fetches", "Fetches of auth.jwks_url by trigger "
                               "(start, refresh, kid_miss) and result (ok, error)",
                               ["trigger", "result"], registry=registry)
        self.misses = Counter("toolgate_jwks_kid_misses", "Tokens naming a kid the key set "
                              "does not hold, by outcome (fetched, joined, rate_limited)",
                              ["outcome"], registry=registry)
        self.last_success = Gauge("toolgate_jwks_last_success_timestamp_seconds",
                                  "When auth.jwks_url last gave a usable key set",
                                  registry=registry, multiprocess_mode="min")
