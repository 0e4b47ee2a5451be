"""The chart's own refusals (templates/_validate.tpl): releases that would render but not run
as asked. Each names the values to change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import MODES, NEWEST, OLDEST, RenderError, render_unchecked, render_values

SIDECAR = MODES["sidecar"]
STANDALONE = MODES["standalone"]
SINGLE = MODES["standalone-single-opa"]

REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("native sidecar on Kubernetes 1.28",
     SIDECAR.values({"gateway": {"nativeSidecar": True}}), "1.28.9",
     r"gateway.nativeSidecar needs Kubernetes >= 1.29 .* the target is v1.28.9"),
    ("native sidecar on the oldest claimed Kubernetes",
     SIDECAR.values({"gateway": {"nativeSidecar": True}}), OLDEST,
     r"gateway.nativeSidecar needs Kubernetes >= 1.29"),
    ("native sidecar in standalone mode",
     STANDALONE.values({"gateway": {"nativeSidecar": True}}), NEWEST,
     r"gateway.nativeSidecar applies to mode: sidecar"),
    ("Kubernetes older than the chart claims", SIDECAR.values(), "1.24.0",
     r"this chart needs Kubernetes >=1.25.0-0; the target is v1.24.0"),
    ("no agent image in sidecar mode",
     SIDECAR.values({"agent": {"image": {"repository": ""}}}), NEWEST,
     r"agent.image.repository is required in sidecar mode"),
    ("engine opa with nothing to ask",
     SIDECAR.values({"config": {"policy": {"engine": "opa"}}}), NEWEST,
     r"config.policy.engine is opa but there is no OPA to ask: set opa.enabled=true"),
    ("engine opa on this pod's loopback without the sidecar",
     SIDECAR.values({"config": {"policy": {"engine": "opa",
                                           "opa_url": "http://127.0.0.1:8181"}}}), NEWEST,
     r"config.policy.opa_url http://127.0.0.1:8181 is this pod's loopback"),
    ("engine opa on localhost without the sidecar",
     SIDECAR.values({"config": {"policy": {"engine": "opa",
                                           "opa_url": "http://localhost:8181"}}}), NEWEST,
     r"is this pod's loopback"),
    ("the OPA sidecar and an OPA elsewhere",
     SIDECAR.values({"opa": {"enabled": True},
                     "config": {"policy": {"opa_url": "http://opa.policy.svc:8181"}}}), NEWEST,
     r"opa.enabled sets config.policy.opa_url to the OPA sidecar"),
    ("the OPA sidecar with the embedded engine",
     SIDECAR.values({"opa": {"enabled": True}, "config": {"policy": {"engine": "embedded"}}}),
     NEWEST, r"opa.enabled runs an OPA sidecar .* but config.policy.engine is embedded"),
    ("two key sources", SIDECAR.values({"config": {"auth": {
        "jwks_url": "https://idp.example.com/jwks"}}}), NEWEST,
     r"exactly one token-verification key source, got 2 \(authKeys.jwks, config.auth.jwks_url\)"),
    ("no key source", SIDECAR.values({"authKeys": {"jwks": ""}}), NEWEST,
     r"exactly one token-verification key source, got 0"),
    ("a credential variable the container lacks",
     SIDECAR.values({"secretEnv": {"CRM_TOKEN": None}}), NEWEST,
     r"config.upstreams.crm.credential.env names the variable CRM_TOKEN, which the gateway "
     r"container does not have"),
    ("an HS256 secret variable the container lacks",
     SIDECAR.values({"authKeys": {"jwks": ""},
                     "config": {"auth": {"hs256_secret_env": "JWT_SECRET",
                                         "algorithms": ["HS256"]}}}), NEWEST,
     r"config.auth.hs256_secret_env names the variable JWT_SECRET"),
    ("standalone replicas on per-pod SQLite", SINGLE.values({"replicaCount": 3}), NEWEST,
     r"standalone mode with up to 3 replicas needs the PostgreSQL store"),
    ("an autoscaler on per-pod SQLite",
     STANDALONE.values({"postgresql": {"dsnSecret": {"name": ""}}}), NEWEST,
     r"standalone mode with up to 6 replicas needs the PostgreSQL store"),
    ("an autoscaler in sidecar mode",
     SIDECAR.values({"autoscaling": {"enabled": True}}), NEWEST,
     r"autoscaling applies to mode: standalone"),
    ("one ReadWriteOnce claim for several pods",
     STANDALONE.values({"persistence": {"enabled": True, "existingClaim": "state"}}), NEWEST,
     r"persistence.enabled mounts one ReadWriteOnce claim"),
    ("a relative SQLite path",
     SIDECAR.values({"config": {"store": "sqlite:///state/toolgate.db"}}), NEWEST,
     r"config.store sqlite:///state/toolgate.db is relative to /etc/toolgate, which is read-only"),
    ("an audit file under the read-only config",
     SIDECAR.values({"config": {"audit": {"file": "audit/toolgate.jsonl"}}}), NEWEST,
     r"config.audit.file must be an absolute path on a writable volume"),
    ("a grace period shorter than the drain",
     SIDECAR.values({"terminationGracePeriodSeconds": 20}), NEWEST,
     r"terminationGracePeriodSeconds 20 is shorter than the gateway's shutdown: preStop 5s "
     r"\+ shutdown.delay_ms and drain_ms 15s \+ 10s to exit = 30s"),
    ("a long drain with a fixed grace period",
     SIDECAR.values({"terminationGracePeriodSeconds": 30,
                     "config": {"shutdown": {"drain_ms": 60000}}}), NEWEST,
     r"terminationGracePeriodSeconds 30 is shorter .* = 75s"),
    ("both monitors",
     STANDALONE.values({"monitoring": {"podMonitor": {"enabled": True}}}), NEWEST,
     r"enable serviceMonitor or podMonitor, not both"),
    ("a ServiceMonitor with no Service",
     SIDECAR.values({"monitoring": {"serviceMonitor": {"enabled": True}}}), NEWEST,
     r"monitoring.serviceMonitor needs a Service: in sidecar mode set service.enabled=true"),
    ("colliding ports",
     SIDECAR.values({"opa": {"enabled": True}, "gateway": {"ports": {"admin": 8181}}}), NEWEST,
     r"the pod's ports collide"),
    ("a DSN given twice",
     STANDALONE.values({"secretEnv": {"TOOLGATE_STORE": "dsn"}}), NEWEST,
     r"the store's DSN is given twice"),
    ("no upstreams", SIDECAR.values({"config": {"upstreams": None}}), NEWEST,
     r"config.upstreams is empty"),
    ("no tool specs", SIDECAR.values({"toolSpecs": None}), NEWEST, r"toolSpecs is empty"),
    ("no policy for the embedded engine", SIDECAR.values({"policies": {"rego": None}}),
     NEWEST, r"policies.rego is empty"),
    ("both PDB bounds", STANDALONE.values({"podDisruptionBudget": {"minAvailable": 1}}),
     NEWEST, r"set minAvailable or maxUnavailable, not both"),
]


@pytest.mark.parametrize(("values", "kube", "message"), [(v, k, m) for _, v, k, m in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_refused_with_what_to_change(values: dict[str, Any], kube: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render_values(values, kube=kube)


def test_an_external_opa_needs_no_chart_policy() -> None:
    """With an OPA service of its own, the policies are that OPA's."""
    values = SIDECAR.values({"policies": {"rego": None, "data": ""},
                             "config": {"policy": {"engine": "opa",
                                                   "opa_url": "http://opa.policy.svc:8181"}}})
    config = render_values(values).config()
    assert config["policy"]["engine"] == "opa"
    assert config["policy"]["opa_url"] == "http://opa.policy.svc:8181"


@pytest.mark.parametrize("kube", ["1.29.0", "1.29.3-eks-4f4795d", "1.30.2-gke.1587003",
                                  "1.31.1+k3s1"])
def test_native_sidecar_renders_from_1_29_whatever_the_vendor_suffix(kube: str) -> None:
    rendered = render_values(SIDECAR.values({"gateway": {"nativeSidecar": True}}), kube=kube)
    assert [c["name"] for c in rendered.pod["initContainers"]] == ["toolgate"]


@pytest.mark.parametrize("kube", ["1.28.15-eks-4f4795d", "1.28.3-gke.100"])
def test_native_sidecar_refused_below_1_29_whatever_the_vendor_suffix(kube: str) -> None:
    with pytest.raises(RenderError, match=r"gateway.nativeSidecar needs Kubernetes >= 1.29"):
        render_values(SIDECAR.values({"gateway": {"nativeSidecar": True}}), kube=kube)


@pytest.mark.parametrize("store", [
    "postgresql://toolgate:s3cret@postgres.db.svc:5432/toolgate",
    "postgres://:s3cret@postgres.db.svc/toolgate",
    "postgresql://toolgate@postgres.db.svc/toolgate?password=s3cret"])
def test_a_password_in_the_configmap_is_refused_behind_the_schema(store: str) -> None:
    """SECURITY: the schema refuses it (tests/helm/test_values_schema.py); so do the
    templates, for a release installed with --skip-schema-validation."""
    with pytest.raises(RenderError, match=r"config.store holds a password, .* put the whole "
                                          r"DSN in a Secret and set postgresql.dsnSecret.name"):
        render_unchecked(SIDECAR.values({"config": {"store": store}}))
    rendered = render_unchecked(SIDECAR.values({"config": {
        "store": "postgresql://toolgate@postgres.db.svc:5432/toolgate"}}))
    assert rendered.config()["store"] == "postgresql://toolgate@postgres.db.svc:5432/toolgate"
