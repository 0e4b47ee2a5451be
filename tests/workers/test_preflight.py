"""The supervisor's preflight with a JWKS URL: it checks the config and leaves fetching the
keys to the workers. An IdP out of reach stops no gateway at start (each worker starts
unready instead), so it must not stop the supervisor either."""

from __future__ import annotations

from pathlib import Path

from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.workers import preflight
from tests.e2e.net import free_port
from tests.support import config


def test_an_idp_out_of_reach_does_not_stop_the_supervisor(tmp_path: Path,
                                                          dev_key: DevKey) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"    # nothing listens there
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      listen=f"127.0.0.1:{free_port()}",
                      auth={"issuer": DEV_ISSUER, "audience": DEV_AUDIENCE,
                            "algorithms": ["RS256"], "jwks_url": url})
    preflight(settings, {"UPSTREAM_TOKEN": "x"}, 2)   # raises nothing, fetches nothing
