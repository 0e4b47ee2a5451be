"""The NetworkPolicies in every documented mode: the admin port reachable only from the peers
the values name, the agent port (standalone) only from the agent pods, no rule that opens a
port to every source by accident, and in standalone mode the agents' egress confined to DNS
and the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.chart import (
    FULLNAME,
    MODES,
    Manifests,
    RenderError,
    render_mode,
    render_unchecked,
    render_values,
)

ALL = list(MODES)
ADMIN, HTTP = 8081, 8080
AGENT_LABELS = {"toolgate.io/gateway": FULLNAME}
DNS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def gateway_policy(rendered: Manifests) -> dict[str, Any]:
    return rendered.one("NetworkPolicy", FULLNAME)


def peers_for(policy: dict[str, Any], port: int) -> list[Any] | None:
    """Who may reach `port`: the peers of every rule that covers it; None = every source."""
    peers: list[Any] = []
    for rule in policy["spec"].get("ingress", []):
        # SECURITY: a rule without `ports` would cover every port of the pod.
        assert rule.get("ports"), f"an ingress rule with no ports: {rule}"
        if any(p["port"] == port for p in rule["ports"]):
            if not rule.get("from"):
                return None
            peers.extend(rule["from"])
    return peers


@pytest.mark.parametrize("mode", ALL)
def test_the_policy_selects_the_release_pods(mode: str) -> None:
    rendered = render_mode(mode)
    policy = gateway_policy(rendered)
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    assert "Ingress" in policy["spec"]["policyTypes"]


@pytest.mark.parametrize("mode", ALL)
def test_the_admin_port_only_from_the_named_peers(mode: str) -> None:
    values = MODES[mode].values()
    policy = gateway_policy(render_mode(mode))
    assert peers_for(policy, ADMIN) == values["networkPolicy"]["adminFrom"]
    assert values["networkPolicy"]["adminFrom"], "the examples name a scraper"


def test_no_named_peer_means_no_pod_reaches_the_admin_port() -> None:
    """[] is nobody: a rule with an empty `from` would admit every source instead."""
    rendered = render_values(MODES["sidecar"].values({"networkPolicy": {"adminFrom": []}}))
    policy = gateway_policy(rendered)
    assert peers_for(policy, ADMIN) == []
    assert policy["spec"]["ingress"] == []


@pytest.mark.parametrize("mode", [m for m in ALL if m.startswith("standalone")])
def test_standalone_the_agent_port_only_from_the_agent_pods(mode: str) -> None:
    policy = gateway_policy(render_mode(mode))
    assert peers_for(policy, HTTP) == [{"podSelector": {"matchLabels": AGENT_LABELS}}]


def test_standalone_agents_in_other_namespaces_and_more_peers() -> None:
    selector = {"matchLabels": {"toolgate.io/agents": "true"}}
    extra = [{"podSelector": {"matchLabels": {"app": "batch-agent"}}}]
    rendered = render_values(MODES["standalone"].values({
        "agents": {"podLabels": {"app": "support-agent"}, "namespaceSelector": selector},
        "networkPolicy": {"agentsFrom": extra}}))
    assert peers_for(gateway_policy(rendered), HTTP) == [
        {"podSelector": {"matchLabels": {"app": "support-agent"}}, "namespaceSelector": selector},
        *extra]


@pytest.mark.parametrize("mode", [m for m in ALL if m.startswith("sidecar")])
def test_sidecar_the_agent_port_is_not_reachable_at_all(mode: str) -> None:
    """It listens on 127.0.0.1; no policy rule names it either."""
    rendered = render_mode(mode)
    assert rendered.config()["listen"].startswith("127.0.0.1:")
    assert peers_for(gateway_policy(rendered), HTTP) == []


def test_sidecar_the_agents_declared_ports_stay_open_unless_restricted() -> None:
    ports = {"agent": {"ports": [{"name": "ui", "containerPort": 3000}]}}
    open_policy = gateway_policy(render_values(MODES["sidecar"].values(ports)))
    assert peers_for(open_policy, 3000) is None          # every source, as without a policy
    assert peers_for(open_policy, ADMIN) is not None      # and never the admin port with it
    peers = [{"podSelector": {"matchLabels": {"app": "frontend"}}}]
    restricted = gateway_policy(render_values(MODES["sidecar"].values(
        {**ports, "networkPolicy": {"agentPortsFrom": peers}})))
    assert peers_for(restricted, 3000) == peers
    closed = gateway_policy(render_values(MODES["sidecar"].values(
        {**ports, "networkPolicy": {"agentPortsFrom": []}})))
    assert peers_for(closed, 3000) == []


@pytest.mark.parametrize("mode", ALL)
def test_egress_is_restricted_only_when_asked(mode: str) -> None:
    values = MODES[mode].values()
    policy = gateway_policy(render_mode(mode))
    asked = values["networkPolicy"].get("egress", {}).get("enabled", False)
    assert ("Egress" in policy["spec"]["policyTypes"]) == asked
    if asked:
        dns, *rest = policy["spec"]["egress"]
        assert dns == {"to": DNS, "ports": DNS_PORTS}
        assert rest == values["networkPolicy"]["egress"]["to"]
    else:
        assert "egress" not in policy["spec"]


def test_standalone_agents_reach_only_dns_the_gateway_and_what_is_listed() -> None:
    rendered = render_mode("standalone")
    values = MODES["standalone"].values()
    policy = rendered.one("NetworkPolicy", f"{FULLNAME}-agents-egress")
    assert policy["spec"]["podSelector"] == {"matchLabels": AGENT_LABELS}
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert "ingress" not in policy["spec"]
    dns, gateway, *extra = policy["spec"]["egress"]
    assert dns == {"to": DNS, "ports": DNS_PORTS}
    selector = rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert gateway == {"to": [{"podSelector": {"matchLabels": selector}}],
                       "ports": [{"port": HTTP, "protocol": "TCP"}]}
    assert extra == values["networkPolicy"]["agentEgress"]["to"]


@pytest.mark.parametrize("mode", [m for m in ALL if m != "standalone"])
def test_no_agent_egress_policy_unless_asked(mode: str) -> None:
    assert len(render_mode(mode).all("NetworkPolicy")) == 1


def test_policies_can_be_turned_off() -> None:
    rendered = render_values(MODES["standalone"].values({"networkPolicy": {"enabled": False}}))
    assert rendered.all("NetworkPolicy") == []


NO_PEER = [
    ("egress", [{}], r"networkPolicy.egress.to\[0\] names no peer"),
    ("egress", [{"ports": [{"port": 443, "protocol": "TCP"}]}],
     r"networkPolicy.egress.to\[0\] names no peer .* allow egress to every destination"),
    ("agentEgress", [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}, {"to": []}],
     r"networkPolicy.agentEgress.to\[1\] names no peer"),
    ("agentEgress", [{"to": [{}]}], r"networkPolicy.agentEgress.to\[0\].to\[0\] is no peer"),
    ("egress", [{"to": [{"podSelector": {}}, {"ipBlock": {}}]}],
     r"networkPolicy.egress.to\[0\].to\[1\] is no peer"),
]


@pytest.mark.parametrize(("key", "rules", "message"), NO_PEER)
def test_an_egress_rule_with_no_peer_is_refused_behind_the_schema(key: str,
                                                                   rules: list[Any],
                                                                   message: str) -> None:
    """SECURITY: rendered, such a rule would allow egress to everywhere. The schema refuses
    it (tests/helm/test_values_schema.py); so do the templates, for a release installed
    with --skip-schema-validation."""
    values = MODES["standalone"].values({"networkPolicy": {key: {"enabled": True}}})
    values["networkPolicy"][key]["to"] = rules
    with pytest.raises(RenderError, match=message):
        render_unchecked(values)


def test_without_the_schema_the_documented_egress_still_renders() -> None:
    rendered = render_unchecked(MODES["standalone"].values())
    assert len(rendered.all("NetworkPolicy")) == 2
