"""The ConfigMap: the rendered toolgate.yaml is a config the gateway itself accepts (its own
loader, its own schema), in every mode; and the OPA sidecar's authorization policy, run on
OPA's own engine, answers the gateway's decision query and refuses everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import config as gateway_config
from tests.e2e.opa import HAVE_OPA
from tests.helm.chart import MODES, render_mode, render_values

ALL = list(MODES)


@pytest.mark.parametrize("mode", ALL)
def test_the_gateway_accepts_the_rendered_config(mode: str, tmp_path: Path) -> None:
    rendered = render_mode(mode)
    path = tmp_path / "toolgate.yaml"
    path.write_text(rendered.one("ConfigMap")["data"]["toolgate.yaml"], encoding="utf-8")
    settings = gateway_config.load(path, {})
    assert settings.log.format == "json"
    assert settings.shutdown.drain_s == 15.0
    assert settings.audit.stdout is True
    assert str(settings.audit.file) == "/var/lib/toolgate/audit/toolgate.jsonl"
    if "opa" in mode:
        assert settings.policy.engine == "opa"
        assert settings.policy.opa_url == "http://127.0.0.1:8181"


def test_the_config_points_at_the_mounted_files() -> None:
    rendered = render_mode("sidecar")
    config = rendered.config()
    assert config["tool_specs"] == ["/etc/toolgate/tool_specs/"]
    assert config["policies"] == ["/etc/toolgate/policies/"]
    assert config["auth"]["jwks_file"] == "/etc/toolgate/keys/jwks.json"
    items = {i["path"] for v in rendered.pod["volumes"] if v["name"] == "config"
             for i in v["configMap"]["items"]}
    assert {"toolgate.yaml", "keys/jwks.json", "policies/toolgate.rego", "policies/data.yaml",
            "tool_specs/get_order.yaml"} <= items
    data = rendered.one("ConfigMap")["data"]
    assert data["tool_spec.get_order.yaml"].startswith("name: get_order")
    # The container reads the file the Dockerfile's CMD and the chart's args name.
    assert rendered.container("toolgate")["args"][:3] == ["serve", "--config",
                                                          "/etc/toolgate/toolgate.yaml"]


def test_a_jwks_url_replaces_the_mounted_keys() -> None:
    rendered = render_mode("standalone")
    auth = rendered.config()["auth"]
    assert auth["jwks_url"] == "https://idp.example.com/.well-known/jwks.json"
    assert "jwks_file" not in auth
    assert "jwks.json" not in rendered.one("ConfigMap")["data"]


def test_log_and_shutdown_settings_pass_through() -> None:
    values = MODES["sidecar"].values({"config": {"log": {"level": "debug", "format": "console"},
                                                 "shutdown": {"delay_ms": 3000}}})
    config = render_values(values).config()
    assert config["log"] == {"level": "debug", "format": "console"}
    assert config["shutdown"] == {"delay_ms": 3000, "drain_ms": 15000}


def opa_allows(authz: str, request: dict[str, Any]) -> bool:
    from opa_bindings import OpaEngine  # type: ignore[import-untyped]  # noqa: PLC0415 (optional)

    engine = OpaEngine()
    try:
        engine.add_policy("authz.rego", authz)
        return bool(engine.eval_document("system.authz.allow", request))
    finally:
        engine.close()


@pytest.mark.skipif(not HAVE_OPA, reason="the real OPA engine is not installed "
                    "(opa-golib-python-bindings: see the README)")
@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("POST", ["v1", "data", "toolgate", "decision"], True),     # the gateway's query
    ("GET", ["health"], True),                                  # the kubelet's probes
    ("GET", ["metrics"], True),
    ("GET", ["v1", "data"], False),                             # read the policy's data
    ("GET", ["v1", "data", "toolgate", "decision"], False),
    ("POST", ["v1", "data", "toolgate", "limits"], False),      # another rule
    ("POST", ["v1", "data"], False),
    ("PUT", ["v1", "policies", "toolgate.rego"], False),        # replace the policy
    ("DELETE", ["v1", "policies", "toolgate.rego"], False),
    ("PUT", ["v1", "data", "toolgate"], False),                 # rewrite the limits
    ("PATCH", ["v1", "data", "toolgate"], False),
    ("POST", ["v1", "query"], False),                           # ad-hoc queries
    ("POST", ["v1", "compile"], False),
    ("POST", [], False),
    ("GET", ["v1", "config"], False),
])
def test_opa_answers_the_decision_query_and_nothing_else(method: str, path: list[str],
                                                         allowed: bool) -> None:
    """SECURITY: in sidecar mode the agent shares OPA's loopback."""
    authz = render_mode("sidecar-opa").one("ConfigMap")["data"]["opa-authz.rego"]
    request = {"method": method, "path": path, "params": {}, "headers": {}}
    assert opa_allows(authz, request) is allowed


@pytest.mark.skipif(not HAVE_OPA, reason="the real OPA engine is not installed")
def test_opa_authz_follows_the_configured_query() -> None:
    values = MODES["sidecar-opa"].values({"config": {"policy": {"query": "data.agents.verdict"}}})
    authz = render_values(values).one("ConfigMap")["data"]["opa-authz.rego"]
    assert opa_allows(authz, {"method": "POST", "path": ["v1", "data", "agents", "verdict"]})
    assert not opa_allows(authz, {"method": "POST",
                                  "path": ["v1", "data", "toolgate", "decision"]})


def test_without_opa_there_is_no_authz_module() -> None:
    assert "opa-authz.rego" not in render_mode("sidecar").one("ConfigMap")["data"]
