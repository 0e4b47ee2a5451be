"""NOTES.txt says what the values did: the mode and how agents reach the gateway, the policy
engine, the state store (and warns about per-pod state only where there is some), how to
reach the admin port and get an approver token, and how metrics are scraped."""

from __future__ import annotations

import pytest

from tests.helm.chart import FULLNAME, MODES, render_mode, render_values

PER_POD_WARNING = "WARNING: 3 replicas with the per-pod SQLite store"


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_says_how_to_reach_the_admin_port_and_act_as_approver(mode: str) -> None:
    notes = render_mode(mode).notes
    assert f"kubectl -n agents port-forward deployment/{FULLNAME} 8081" in notes
    assert "toolgate approvals list --admin-url http://127.0.0.1:8081" in notes
    assert "--scope toolgate:approve --role" in notes
    assert "/metrics on the admin port" in notes


def test_sidecar() -> None:
    notes = render_mode("sidecar").notes
    assert "the agent \"agent\" with Toolgate as its sidecar (1 replica)" in notes
    assert "http://127.0.0.1:8080 (env TOOLGATE_URL)" in notes
    assert "Policy:       embedded Rego" in notes
    assert "State:        SQLite, per pod" in notes
    assert "WARNING" not in notes
    assert "monitoring.serviceMonitor, .podMonitor or .scrapeAnnotations to scrape it" in notes


def test_native_sidecar_and_opa() -> None:
    notes = render_mode("sidecar-native-opa").notes
    assert "as its native sidecar" in notes
    assert "an OPA sidecar (openpolicyagent/opa:1.20.2) on 127.0.0.1:8181" in notes


def test_several_agent_pods_on_sqlite_are_warned_about() -> None:
    notes = render_values(MODES["sidecar"].values({"replicaCount": 3})).notes
    assert PER_POD_WARNING in notes
    assert "a switch set on one pod stops nothing on the others" in notes


def test_no_per_pod_warning_with_postgresql() -> None:
    notes = render_mode("sidecar-shared-monitored").notes
    assert "WARNING" not in notes and "per pod" not in notes
    assert "State:        PostgreSQL (DSN from Secret toolgate-postgres)" in notes
    assert "scraped through ServiceMonitor" in notes
    dsn = render_values(MODES["sidecar"].values({
        "replicaCount": 3, "config": {"store": "postgresql://toolgate@pg.db.svc/toolgate"}}))
    assert "WARNING" not in dsn.notes and "State:        PostgreSQL" in dsn.notes


def test_standalone() -> None:
    notes = render_mode("standalone").notes
    assert "standalone gateway (2 to 6 replicas, autoscaled)" in notes
    assert f"http://{FULLNAME}.agents.svc:8080" in notes
    assert f"pods labelled toolgate.io/gateway={FULLNAME} in namespace agents" in notes
    assert "Their egress is confined to DNS, this gateway" in notes
    assert "an IdP key rotation needs no restart" in notes
    assert "the IdP (https://idp.example.com/.well-known/jwks.json), PostgreSQL" in notes
    assert "plain HTTP inside the cluster" in notes
    assert "Each pod has its own queue" not in notes


def test_standalone_single_replica_on_sqlite() -> None:
    notes = render_mode("standalone-single-opa").notes
    assert "(1 replica)" in notes
    assert "State:        SQLite, per pod" in notes
    assert "scraped through PodMonitor" in notes
    assert "set networkPolicy.agentEgress.enabled=true" in notes


def test_admin_port_closed_to_pods_is_said() -> None:
    notes = render_values(MODES["sidecar"].values({"networkPolicy": {"adminFrom": []}})).notes
    assert "no pod may reach the admin port yet" in notes
    assert "no pod may reach the admin port" not in render_mode("sidecar").notes


def test_live_policy_reload_is_said() -> None:
    notes = render_values(MODES["sidecar"].values({"config": {"policy": {"watch_ms": 1000}}}))
    assert "reloaded live when the ConfigMap's specs or policies change" in notes.notes
