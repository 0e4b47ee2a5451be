"""Which URLs may serve the gateway's keys — checked when the config is loaded, so
`toolgate check --offline` reports them too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load as load_config
from gateway.core.errors import LoadErrors
from gateway.jwks.url import shown, url_problem


@pytest.mark.parametrize("url", [
    "https://idp.example.com/.well-known/jwks.json",
    "https://idp.example.com:8443/keys?appid=42",
    "http://127.0.0.1:8080/jwks", "http://127.1.2.3/jwks", "http://[::1]:9/jwks",
    "http://localhost:8080/jwks", "https://[2001:db8::1]/jwks",
])
def test_usable_urls(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(("url", "message"), [
    ("http://idp.example.com/jwks", "must be https://"),
    ("http://10.0.0.1/jwks", "must be https://"),
    ("http://localhost.evil.example/jwks", "must be https://"),
    ("http://127.0.0.1.nip.io/jwks", "must be https://"),
    ("ftp://idp.example.com/jwks", "must be an https:// URL"),
    ("https:///jwks", "must be an https:// URL"),
    ("https://user:pw@idp.example.com/jwks", "takes no credentials"),
    ("https://idp.example.com/jwks#x", "takes no #fragment"),
    ("https://idp.example.com:port/jwks", "valid port"),
])
def test_refused_urls(url: str, message: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert message in problem
    assert "pw" not in problem


def test_a_url_is_shown_without_query_or_credentials() -> None:
    assert shown("https://u:p@idp.example.com:8443/keys?appid=42") == \
        "https://idp.example.com:8443/keys"


def write(tmp_path: Path, auth: dict[str, Any]) -> Path:
    path = tmp_path / "toolgate.yaml"
    path.write_text(yaml.safe_dump({
        "auth": {"issuer": "https://idp.example.com", "audience": "toolgate",
                 "algorithms": ["RS256"], **auth},
        "upstreams": {"billing": {"url": "http://127.0.0.1:9000"}}}), encoding="utf-8")
    return path


def test_the_config_takes_a_jwks_url_and_its_intervals(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, {
        "jwks_url": "https://idp.example.com/jwks", "jwks_refresh_s": 600,
        "jwks_miss_refresh_s": 10, "jwks_timeout_ms": 1500}), {})
    auth = settings.auth
    assert (auth.jwks_url, auth.jwks_refresh_s, auth.jwks_miss_refresh_s,
            auth.jwks_timeout_s) == ("https://idp.example.com/jwks", 600, 10, 1.5)


def test_an_http_url_to_another_host_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadErrors) as info:
        load_config(write(tmp_path, {"jwks_url": "http://idp.example.com/jwks"}), {})
    assert any("auth.jwks_url must be https://" in e.message for e in info.value.errors)


def test_the_environment_cannot_slip_an_http_url_in(tmp_path: Path) -> None:
    with pytest.raises(LoadErrors) as info:
        load_config(write(tmp_path, {"jwks_url": "https://idp.example.com/jwks"}),
                    {"TOOLGATE_AUTH__JWKS_URL": "http://idp.example.com/jwks"})
    assert any("must be https://" in e.message for e in info.value.errors)


def test_hmac_algorithms_alone_with_a_url_are_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadErrors) as info:
        load_config(write(tmp_path, {"jwks_url": "https://idp.example.com/jwks",
                                     "algorithms": ["HS256"]}), {})
    assert any("never one fetched from a URL" in e.message for e in info.value.errors)


def test_a_url_and_a_file_together_are_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadErrors):
        load_config(write(tmp_path, {"jwks_url": "https://idp.example.com/jwks",
                                     "jwks_file": "keys/jwks.json"}), {})
