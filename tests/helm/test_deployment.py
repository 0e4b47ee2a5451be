"""The Deployment in every documented mode: every container hardened, the gateway where the
mode puts it, the OPA sidecar wired and locked to loopback, shutdown that drains within the
grace period, and pod checksums that roll the pods when (and only when) they must."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import FULLNAME, MODES, NEWEST, Manifests, render_mode, render_values

ALL = list(MODES)


def effective_security(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's securityContext over the pod's (Kubernetes' precedence)."""
    pod_ctx = pod.get("securityContext", {})
    merged = {k: pod_ctx[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup",
                                       "seccompProfile") if k in pod_ctx}
    merged.update(container.get("securityContext", {}))
    return merged


@pytest.mark.parametrize("mode", ALL)
def test_every_container_is_hardened(mode: str) -> None:
    rendered = render_mode(mode)
    pod = rendered.pod
    # SECURITY: nothing shared with the node or between the containers' processes.
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert pod["shareProcessNamespace"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    names = []
    for container in rendered.containers():
        names.append(container["name"])
        ctx = effective_security(pod, container)
        where = f"{mode}: container {container['name']}"
        assert ctx.get("runAsNonRoot") is True, where
        assert ctx.get("runAsUser", 1) != 0, where
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("readOnlyRootFilesystem") is True, where
        assert ctx.get("privileged", False) is False, where
        assert "ALL" in ctx["capabilities"]["drop"], where
        assert not ctx["capabilities"].get("add"), where
        assert ctx["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), where
    expected = {"toolgate"} | ({"agent"} if mode.startswith("sidecar") else set())
    expected |= {"opa"} if "opa" in mode else set()
    assert sorted(names) == sorted(expected)


@pytest.mark.parametrize("mode", ALL)
def test_only_the_gateway_holds_the_upstream_credentials(mode: str) -> None:
    rendered = render_mode(mode)
    for container in rendered.containers():
        refs = [e["name"] for e in container.get("env", []) if "valueFrom" in e]
        if container["name"] == "toolgate":
            assert {"CRM_TOKEN", "BILLING_TOKEN", "HR_TOKEN"} <= set(refs)
        else:
            # SECURITY: the agent and OPA never see a Secret.
            assert refs == [], container["name"]
            assert "envFrom" not in container


def test_sidecar_mode_keeps_the_agent_port_on_loopback() -> None:
    rendered = render_mode("sidecar")
    assert rendered.config()["listen"] == "127.0.0.1:8080"
    assert rendered.config()["admin_listen"] == "0.0.0.0:8081"
    gateway = rendered.container("toolgate")
    assert [p["name"] for p in gateway["ports"]] == ["admin"]
    agent = rendered.container("agent")
    assert {"name": "TOOLGATE_URL", "value": "http://127.0.0.1:8080"} in agent["env"]
    assert "initContainers" not in rendered.pod
    assert rendered.kinds() == ["ConfigMap", "Deployment", "NetworkPolicy"]


@pytest.mark.parametrize("mode", ["sidecar-native", "sidecar-native-opa"])
def test_a_native_sidecar_starts_before_the_agent_and_outlives_it(mode: str) -> None:
    rendered = render_mode(mode)
    init = rendered.pod["initContainers"]
    # OPA first, so the gateway's first decisions find it; the kubelet stops them in reverse.
    assert [c["name"] for c in init] == (["opa", "toolgate"] if "opa" in mode else ["toolgate"])
    assert all(c["restartPolicy"] == "Always" for c in init)
    assert [c["name"] for c in rendered.pod["containers"]] == ["agent"]
    # Stopped only after the agent has exited: nothing left to wait for before SIGTERM.
    assert "lifecycle" not in rendered.container("toolgate")
    assert rendered.container("toolgate")["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_standalone_mode_runs_the_gateway_alone_behind_a_service() -> None:
    rendered = render_mode("standalone")
    assert [c["name"] for c in rendered.pod["containers"]] == ["toolgate"]
    assert rendered.config()["listen"] == "0.0.0.0:8080"
    assert rendered.config()["forwarded_host"] == f"{FULLNAME}.agents.svc:8080"
    deployment = rendered.one("Deployment")
    assert "replicas" not in deployment["spec"]          # the autoscaler's
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    service = rendered.one("Service", FULLNAME)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("http", 8080),
                                                                          ("admin", 8081)}
    gateway = rendered.container("toolgate")
    assert gateway["args"] == ["serve", "--config", "/etc/toolgate/toolgate.yaml",
                               "--workers", "2"]
    # The DSN, password included, from its Secret; it overrides config.store.
    assert {"name": "TOOLGATE_STORE", "valueFrom": {"secretKeyRef": {
        "name": "toolgate-postgres", "key": "dsn"}}} in gateway["env"]


def test_one_worker_is_the_plain_command() -> None:
    assert render_mode("sidecar").container("toolgate")["args"] == [
        "serve", "--config", "/etc/toolgate/toolgate.yaml"]


@pytest.mark.parametrize("mode", ["sidecar-opa", "standalone-single-opa", "sidecar-native-opa"])
def test_the_opa_sidecar(mode: str) -> None:
    rendered = render_mode(mode)
    opa = rendered.container("opa")
    assert opa["image"] == "openpolicyagent/opa:1.20.2"
    args = opa["args"]
    # SECURITY: the REST API on loopback only, and answering only the decision query.
    assert "--addr=127.0.0.1:8181" in args
    assert "--authorization=basic" in args
    assert "--disable-telemetry" in args
    assert args[-2:] == ["/etc/opa/policies", "/etc/opa/authz/authz.rego"]
    assert [p["containerPort"] for p in opa["ports"]] == [8282]   # /health, /metrics only
    assert opa["readinessProbe"]["httpGet"] == {"path": "/health", "port": "opa-diag"}
    # The same policies as the chart's ConfigMap, and nothing else of it.
    [mount] = opa["volumeMounts"]
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == mount["name"])
    config_volume = next(v for v in rendered.pod["volumes"] if v["name"] == "config")
    policy_items = [i for i in config_volume["configMap"]["items"]
                    if i["path"].startswith("policies/")]
    assert volume["configMap"]["items"] == [*policy_items,
                                            {"key": "opa-authz.rego", "path": "authz/authz.rego"}]
    assert "toolgate.yaml" not in str(volume)
    config = rendered.config()
    assert config["policy"]["engine"] == "opa"
    assert config["policy"]["opa_url"] == "http://127.0.0.1:8181"


def shutdown(rendered: Manifests) -> tuple[int, int, int]:
    """(preStop sleep, grace period, OPA's wait) of a render."""
    gateway = rendered.container("toolgate")
    command = gateway.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop = int(command[1]) if command else 0
    if command:
        assert command[0] == "/bin/sleep"           # the image is python:3.11-slim based
    wait = 0
    if any(c["name"] == "opa" for c in rendered.containers()):
        [flag] = [a for a in rendered.container("opa")["args"]
                  if a.startswith("--shutdown-wait-period=")]
        wait = int(flag.split("=")[1])
    return pre_stop, rendered.pod["terminationGracePeriodSeconds"], wait


@pytest.mark.parametrize("mode", ALL)
def test_the_grace_period_covers_prestop_and_the_drain(mode: str) -> None:
    rendered = render_mode(mode)
    pre_stop, grace, opa_wait = shutdown(rendered)
    config = rendered.config()["shutdown"]
    drain = -(-(config["delay_ms"] + config["drain_ms"]) // 1000)
    assert grace >= pre_stop + drain + 10
    assert pre_stop == (0 if "native" in mode else 5)
    if opa_wait:
        # OPA keeps answering until the gateway has drained.
        assert opa_wait == pre_stop + drain


def test_a_longer_drain_lengthens_the_computed_grace_period() -> None:
    values = MODES["standalone"].values({"config": {"shutdown": {"delay_ms": 2000,
                                                                 "drain_ms": 60000}},
                                         "gateway": {"preStopSleepSeconds": 10}})
    pre_stop, grace, _ = shutdown(render_values(values))
    assert (pre_stop, grace) == (10, 10 + 62 + 10)


def test_a_sufficient_explicit_grace_period_is_kept() -> None:
    values = MODES["sidecar"].values({"terminationGracePeriodSeconds": 120})
    assert shutdown(render_values(values))[1] == 120


def pod_annotations(values: dict[str, Any]) -> dict[str, str]:
    deployment = render_values(values, kube=NEWEST).one("Deployment")
    found: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
    return found


def test_a_config_change_rolls_the_pods() -> None:
    base = pod_annotations(MODES["sidecar"].values())
    changed = pod_annotations(MODES["sidecar"].values({"config": {"limits": {
        "max_body_bytes": 2048}}}))
    assert base["checksum/config"] != changed["checksum/config"]
    rotated = pod_annotations(MODES["sidecar"].values({"authKeys": {"jwks": '{"keys": [1]}'}}))
    assert base["checksum/config"] != rotated["checksum/config"]


def test_a_created_secret_rolls_the_pods_when_it_changes() -> None:
    values = MODES["sidecar"].values({"secret": {"create": True, "stringData": {
        "crm-token": "a", "billing-token": "b", "hr-token": "c"}}})
    before = pod_annotations(values)
    values["secret"]["stringData"]["crm-token"] = "rotated"
    assert before["checksum/secret"] != pod_annotations(values)["checksum/secret"]


def _policy_changed(values: dict[str, Any]) -> dict[str, Any]:
    values["policies"]["data"] = values["policies"]["data"] + "\n# a new limit\n"
    values["toolSpecs"]["get_order"] = values["toolSpecs"]["get_order"] + "\n# edited\n"
    return values


def test_without_the_watch_a_spec_or_policy_change_rolls_the_pods() -> None:
    base = MODES["sidecar"].values()
    assert pod_annotations(base) != pod_annotations(_policy_changed(MODES["sidecar"].values()))


def test_with_the_watch_a_spec_or_policy_change_applies_live() -> None:
    """policy.watch_ms: the pod template stays the same, the ConfigMap alone changes, and
    the gateway reloads from the updated files (gateway.bundle.watch)."""
    watch = {"config": {"policy": {"watch_ms": 1000}}}
    base = MODES["sidecar"].values(watch)
    changed = _policy_changed(MODES["sidecar"].values(watch))
    assert pod_annotations(base) == pod_annotations(changed)
    assert render_values(base).one("ConfigMap") != render_values(changed).one("ConfigMap")


def test_with_opa_a_policy_change_still_rolls_the_pods() -> None:
    """OPA loads its policies at start; only the tool specs reload live."""
    watch = {"config": {"policy": {"watch_ms": 1000}}}
    base = pod_annotations(MODES["sidecar-opa"].values(watch))
    changed = pod_annotations(_policy_changed(MODES["sidecar-opa"].values(watch)))
    assert "checksum/tool-specs" not in base
    assert base["checksum/policies"] != changed["checksum/policies"]


def test_scrape_annotations() -> None:
    found = pod_annotations(MODES["sidecar-shared-monitored"].values())
    assert (found["prometheus.io/scrape"], found["prometheus.io/port"],
            found["prometheus.io/path"]) == ("true", "8081", "/metrics")
    assert "prometheus.io/scrape" not in pod_annotations(MODES["sidecar"].values())


def test_images_can_be_pinned_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render_values(MODES["sidecar-opa"].values({
        "gateway": {"image": {"digest": digest}}, "opa": {"image": {"digest": digest}}}))
    assert rendered.container("toolgate")["image"] == f"registry.example.com/toolgate@{digest}"
    assert rendered.container("opa")["image"] == f"openpolicyagent/opa@{digest}"


def test_a_persistent_claim_is_used_by_one_pod_at_a_time() -> None:
    rendered = render_values(MODES["sidecar"].values({"persistence": {
        "enabled": True, "existingClaim": "tg-state"}}))
    assert rendered.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    state = next(v for v in rendered.pod["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "tg-state"}}
