"""Every object of every documented mode is valid Kubernetes, strictly (no unknown field),
for the oldest and the newest Kubernetes the chart claims (`kubernetes-validate --strict`).
The Prometheus Operator's monitors are CRDs it does not know; they are checked against
`monitor_schemas`, and their shape below."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.helm.chart import MODES, NEWEST, OLDEST, RenderError, render_mode
from tests.helm.monitor_schemas import SCHEMAS

CASES = [(mode, kube) for mode, spec in MODES.items() for kube in (spec.min_kube, NEWEST)]


@pytest.mark.parametrize(("mode", "kube"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_every_object_validates_strictly(mode: str, kube: str) -> None:
    manifests = render_mode(mode, kube)
    assert manifests.objects
    for obj in manifests.objects:
        kind = obj["kind"]
        if kind in SCHEMAS:
            jsonschema.Draft7Validator(SCHEMAS[kind]).validate(obj)
            continue
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{mode} on Kubernetes {kube}: {kind}/{obj['metadata']['name']}: "
                        f"{path}: {exc.message}")


def test_the_claimed_range_is_what_kubernetes_validate_knows() -> None:
    """The oldest claimed version has schemas (validating against an older one's nearest
    newer schemas would prove nothing), and 1.25 is that oldest (Chart.yaml)."""
    known = kubernetes_validate.utils.all_versions()
    assert OLDEST == "1.25.0"
    assert OLDEST in known and known[-1] == NEWEST


def test_native_sidecars_do_not_exist_in_the_oldest_claimed_kubernetes() -> None:
    """Why the chart refuses them below 1.29 (test_validate has the refusal): the oldest
    API has no container restartPolicy, and 1.28 has it behind an alpha gate that is off by
    default, where the field is dropped and the gateway becomes an init container that never
    ends, so the agent never starts."""
    with pytest.raises(RenderError):
        render_mode("sidecar-native", "1.28.0")
    deployment = render_mode("sidecar-native", "1.29.0").one("Deployment")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)


def _monitor(mode: str) -> dict[str, Any]:
    rendered = render_mode(mode)
    return next(o for o in rendered.objects if o["kind"] in SCHEMAS)


@pytest.mark.parametrize("mode", ["standalone", "sidecar-shared-monitored"])
def test_the_service_monitor_scrapes_the_admin_port_of_the_release_service(mode: str) -> None:
    rendered = render_mode(mode)
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["agents"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert "admin" in [p["name"] for p in service["spec"]["ports"]]
    # The labels a Prometheus selects monitors by (values-standalone.yaml sets one).
    if mode == "standalone":
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_pod_monitor_scrapes_the_admin_port_of_the_release_pods() -> None:
    rendered = render_mode("standalone-single-opa")
    monitor = rendered.one("PodMonitor")
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    ports = {p["name"] for p in rendered.container("toolgate")["ports"]}
    assert "admin" in ports


def test_the_monitor_schemas_refuse_a_misspelt_field() -> None:
    monitor = _monitor("standalone")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMAS["ServiceMonitor"]).validate(broken)
