"""values.schema.json: in step with its generator and with the gateway's config schema, and
refusing, with the offending key's path, what the issue lists (a string for a number, an
unknown key, a weakened securityContext, a value outside an enum)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from tests.helm.chart import CHART, MODES, RenderError, render_values
from tests.helm.values_schema import (
    SCHEMA_FILE,
    STORE_PASSWORD_REFUSED,
    chart_config_schema,
    render,
)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def test_the_file_is_what_the_generator_writes() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "helm/toolgate/values.schema.json is stale: run `python -m tests.helm.values_schema`")


def test_config_is_the_gateway_config_schema_less_what_the_chart_sets() -> None:
    config = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))["properties"]["config"]
    assert config == chart_config_schema()
    assert not {"listen", "admin_listen", "tool_specs", "policies"} & config["properties"].keys()
    assert config["additionalProperties"] is False


def test_helm_loads_it_as_the_chart_schema(chart: helm_python.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False


def test_the_defaults_and_every_documented_mode_pass(chart: helm_python.Chart) -> None:
    chart.validate_schema({})
    for mode in MODES.values():
        chart.validate_schema(mode.values())


# (values, the path Helm names, what it says about it)
REJECTED: list[tuple[str, dict[str, Any], str, str]] = [
    ("replicas as a word", {"replicaCount": "three"}, "/replicaCount",
     "got string, want integer"),
    ("a port that is not a number", {"gateway": {"ports": {"admin": "abc"}}},
     "/gateway/ports/admin", "got string, want integer"),
    ("a port out of range", {"gateway": {"ports": {"http": 70000}}}, "/gateway/ports/http",
     "maximum"),
    ("an OPA port that is not a number", {"opa": {"port": "8181/tcp"}}, "/opa/port",
     "got string, want integer"),
    ("a top-level typo", {"replicaCnt": 3}, "''", "additional properties 'replicaCnt'"),
    ("a typo in gateway", {"gateway": {"imagee": {}}}, "/gateway",
     "additional properties 'imagee'"),
    ("a typo in the gateway config", {"config": {"polcy": {"engine": "opa"}}}, "/config",
     "additional properties 'polcy'"),
    ("a typo in config.auth", {"config": {"auth": {"jwks_uri": "https://idp/jwks"}}},
     "/config/auth", "additional properties 'jwks_uri'"),
    ("a typo in networkPolicy", {"networkPolicy": {"adminfrom": []}}, "/networkPolicy",
     "additional properties 'adminfrom'"),
    ("a typo in opa", {"opa": {"enable": True}}, "/opa", "additional properties 'enable'"),
    ("a key the chart sets", {"config": {"listen": "0.0.0.0:8080"}}, "/config",
     "additional properties 'listen'"),
    ("the gateway as root", {"gateway": {"securityContext": {"runAsUser": 0}}},
     "/gateway/securityContext/runAsUser", "minimum: got 0, want 1"),
    ("the gateway allowed root", {"gateway": {"securityContext": {"runAsNonRoot": False}}},
     "/gateway/securityContext/runAsNonRoot", "value must be true"),
    ("the gateway's runAsNonRoot removed",
     {"gateway": {"securityContext": {"runAsNonRoot": None}}},
     "/gateway/securityContext", "missing property 'runAsNonRoot'"),
    ("privilege escalation",
     {"gateway": {"securityContext": {"allowPrivilegeEscalation": True}}},
     "/gateway/securityContext/allowPrivilegeEscalation", "value must be false"),
    ("a writable root", {"gateway": {"securityContext": {"readOnlyRootFilesystem": False}}},
     "/gateway/securityContext/readOnlyRootFilesystem", "value must be true"),
    ("a privileged gateway", {"gateway": {"securityContext": {"privileged": True}}},
     "/gateway/securityContext/privileged", "value must be false"),
    ("capabilities kept", {"gateway": {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}},
     "/gateway/securityContext/capabilities/drop", "contains"),
    ("a capability added",
     {"gateway": {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}}},
     "/gateway/securityContext/capabilities/add", "maxItems"),
    ("no seccomp", {"gateway": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}},
     "/gateway/securityContext/seccompProfile/type", "value must be one of"),
    ("OPA as root", {"opa": {"securityContext": {"runAsUser": 0}}},
     "/opa/securityContext/runAsUser", "minimum: got 0, want 1"),
    ("a root pod", {"podSecurityContext": {"runAsNonRoot": False}},
     "/podSecurityContext/runAsNonRoot", "value must be true"),
    ("a privileged agent", {"agent": {"securityContext": {"privileged": True}}},
     "/agent/securityContext/privileged", "value must be false"),
    ("the agent as root", {"agent": {"securityContext": {"runAsUser": 0}}},
     "/agent/securityContext/runAsUser", "minimum: got 0, want 1"),
    ("an unknown mode", {"mode": "sidecars"}, "/mode",
     "value must be one of 'sidecar', 'standalone'"),
    ("an unknown pull policy", {"gateway": {"image": {"pullPolicy": "Sometimes"}}},
     "/gateway/image/pullPolicy", "value must be one of"),
    ("an unknown log format", {"config": {"log": {"format": "text"}}}, "/config/log/format",
     "value must be one of"),
    ("an unknown log level", {"config": {"log": {"level": "verbose"}}}, "/config/log/level",
     "value must be one of"),
    ("an unknown engine", {"config": {"policy": {"engine": "rego"}}}, "/config/policy/engine",
     "value must be one of"),
    ("alg none", {"config": {"auth": {"algorithms": ["none"]}}}, "/config/auth/algorithms/0",
     "value must be one of"),
    ("an unknown OPA log level", {"opa": {"logLevel": "warn"}}, "/opa/logLevel",
     "value must be one of"),
    ("an unknown Service type", {"service": {"type": "Internal"}}, "/service/type",
     "value must be one of"),
    ("no workers", {"gateway": {"workers": 0}}, "/gateway/workers", "minimum"),
    ("a negative drain", {"config": {"shutdown": {"drain_ms": -1}}},
     "/config/shutdown/drain_ms", "minimum"),
    ("a JWKS URL that is not one", {"config": {"auth": {"jwks_url": "idp.example.com/jwks"}}},
     "/config/auth/jwks_url", "does not match pattern"),
    ("a digest that is not one", {"opa": {"image": {"digest": "latest"}}},
     "/opa/image/digest", "does not match pattern"),
    ("a scrape interval in words", {"monitoring": {"interval": "30 seconds"}},
     "/monitoring/interval", "does not match pattern"),
    # Egress rules that would allow every destination, and peers that name nothing.
    ("an empty egress rule", {"networkPolicy": {"egress": {"to": [{}]}}},
     "/networkPolicy/egress/to/0", "missing property 'to'"),
    ("an egress rule with ports and no peer",
     {"networkPolicy": {"egress": {"to": [{"ports": [{"port": 443, "protocol": "TCP"}]}]}}},
     "/networkPolicy/egress/to/0", "missing property 'to'"),
    ("an egress rule with an empty peer list",
     {"networkPolicy": {"egress": {"to": [{"to": [], "ports": [{"port": 443}]}]}}},
     "/networkPolicy/egress/to/0/to", "minItems: got 0, want 1"),
    ("an empty egress peer", {"networkPolicy": {"egress": {"to": [{"to": [{}]}]}}},
     "/networkPolicy/egress/to/0/to/0", "minProperties: got 0, want 1"),
    ("an empty agent egress rule", {"networkPolicy": {"agentEgress": {"to": [{}]}}},
     "/networkPolicy/agentEgress/to/0", "missing property 'to'"),
    ("an agent egress rule with ports and no peer",
     {"networkPolicy": {"agentEgress": {"to": [{"ports": [{"port": 443}]}]}}},
     "/networkPolicy/agentEgress/to/0", "missing property 'to'"),
    ("an empty agent egress peer",
     {"networkPolicy": {"agentEgress": {"to": [{"to": [{}]}]}}},
     "/networkPolicy/agentEgress/to/0/to/0", "minProperties: got 0, want 1"),
    ("a peer with a typo", {"networkPolicy": {"egress": {"to": [{"to": [
        {"namespaceSelecter": {"matchLabels": {"team": "payments"}}}]}]}}},
     "/networkPolicy/egress/to/0/to/0", "additional properties 'namespaceSelecter'"),
    ("an empty admin peer", {"networkPolicy": {"adminFrom": [{}]}},
     "/networkPolicy/adminFrom/0", "minProperties: got 0, want 1"),
    ("an empty DNS peer", {"networkPolicy": {"dns": {"to": [{}]}}},
     "/networkPolicy/dns/to/0", "minProperties: got 0, want 1"),
    # A password in the ConfigMap.
    ("a DSN with a password",
     {"config": {"store": "postgresql://toolgate:s3cret@postgres.db.svc:5432/toolgate"}},
     "/config/store", f"value must be '{STORE_PASSWORD_REFUSED}'"),
    ("a DSN with an empty user and a password",
     {"config": {"store": "postgres://:s3cret@postgres.db.svc/toolgate"}},
     "/config/store", "value must be 'a DSN without a password"),
    ("a DSN with a password parameter",
     {"config": {"store": "postgresql://toolgate@postgres.db.svc/toolgate?sslmode=require&"
                          "password=s3cret"}},
     "/config/store", "value must be 'a DSN without a password"),
    # SELinux and AppArmor that lift the confinement.
    ("a super-privileged SELinux type",
     {"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}},
     "/podSecurityContext/seLinuxOptions/type", "value must be one of 'container_t'"),
    ("an unconfined SELinux type",
     {"podSecurityContext": {"seLinuxOptions": {"type": "unconfined_t"}}},
     "/podSecurityContext/seLinuxOptions/type", "value must be one of"),
    ("an SELinux user", {"podSecurityContext": {"seLinuxOptions": {"user": "system_u"}}},
     "/podSecurityContext/seLinuxOptions", "additional properties 'user'"),
    ("an SELinux role", {"podSecurityContext": {"seLinuxOptions": {"role": "sysadm_r"}}},
     "/podSecurityContext/seLinuxOptions", "additional properties 'role'"),
    ("AppArmor unconfined",
     {"podSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}},
     "/podSecurityContext/appArmorProfile/type", "value must be one of"),
    ("an AppArmor profile with no type",
     {"podSecurityContext": {"appArmorProfile": {"localhostProfile": "x"}}},
     "/podSecurityContext/appArmorProfile", "missing property 'type'"),
    ("an SELinux change policy that is not one",
     {"podSecurityContext": {"seLinuxChangePolicy": "Never"}},
     "/podSecurityContext/seLinuxChangePolicy", "value must be one of"),
    ("a super-privileged agent",
     {"agent": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}},
     "/agent/securityContext/seLinuxOptions/type", "value must be one of"),
    ("an unconfined agent",
     {"agent": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}},
     "/agent/securityContext/appArmorProfile/type", "value must be one of"),
    ("an agent with /proc unmasked", {"agent": {"securityContext": {"procMount": "Unmasked"}}},
     "/agent/securityContext/procMount", "value must be 'Default'"),
]


@pytest.mark.parametrize(("values", "path", "message"),
                         [(v, p, m) for _, v, p, m in REJECTED],
                         ids=[case[0] for case in REJECTED])
def test_helm_refuses_with_the_key_and_the_reason(chart: helm_python.Chart,
                                                   values: dict[str, Any], path: str,
                                                   message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    text = str(caught.value)
    assert f"at '{path.strip(chr(39))}'" in text and message in text, text


def test_a_render_is_refused_the_same_way() -> None:
    """`helm template`/`install` apply the schema before any template runs."""
    values = MODES["sidecar"].values({"replicaCount": "three"})
    with pytest.raises(RenderError, match=r"at '/replicaCount': got string, want integer"):
        render_values(values)


# What the rules above still let through: the confined settings, explicit wide peers, a
# DSN with no password (a host's port is no password; the user alone is no password).
ALLOWED: list[tuple[str, dict[str, Any]]] = [
    ("an SELinux level and the container type", {"podSecurityContext": {
        "seLinuxOptions": {"type": "container_t", "level": "s0:c123,c456"},
        "seLinuxChangePolicy": "MountOption"}}),
    ("the runtime's AppArmor profile", {"podSecurityContext": {
        "appArmorProfile": {"type": "RuntimeDefault"}}}),
    ("a local AppArmor profile for the agent", {"agent": {"securityContext": {
        "appArmorProfile": {"type": "Localhost", "localhostProfile": "agent"}}}}),
    ("egress to the Internet, said so", {"networkPolicy": {"egress": {"enabled": True, "to": [
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
         "ports": [{"port": 443, "protocol": "TCP"}]}]}}}),
    ("egress to every pod of a namespace", {"networkPolicy": {"agentEgress": {"to": [
        {"to": [{"namespaceSelector": {"matchLabels": {"team": "llm"}}, "podSelector": {}}]}]}}}),
    ("a DSN with a user, a port and options", {"config": {
        "store": "postgresql://toolgate@postgres.db.svc:5432/toolgate?sslmode=verify-full"}}),
    ("several hosts", {"config": {"store": "postgresql://toolgate@db-1:5432,db-2:5432/toolgate"}}),
]


@pytest.mark.parametrize("values", [v for _, v in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_what_the_rules_still_allow(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(values)
