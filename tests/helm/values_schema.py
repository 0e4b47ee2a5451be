"""The Helm chart's `values.schema.json` (JSON Schema draft-07), written as Python.

Helm checks the merged values against it on install, upgrade, template and lint, so a typo,
a wrong type or a weakened security setting stops the release with the key's path
(`at '/gateway/securityContext/runAsUser': minimum: got 0, want 1`). Our own objects are
closed (`additionalProperties: false`); Kubernetes objects passed through as they are
(resources, affinity, probes, env, NetworkPolicy peers) stay open.

`config` is the gateway's own config schema (`gateway.config_schema.CONFIG_SCHEMA`) less what
the chart sets itself, so the chart refuses what the gateway would refuse at start; and a
`store` DSN with a password, which belongs in a Secret rather than the ConfigMap.

    python -m tests.helm.values_schema     # rewrite helm/toolgate/values.schema.json

`tests/helm/test_values_schema.py` fails when the file and this module disagree.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config_schema import CONFIG_SCHEMA

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "helm" / "toolgate" / "values.schema.json"

# Keys of toolgate.yaml the chart renders itself: the ports it binds and the mounted paths.
CHART_OWNED_CONFIG = ("listen", "admin_listen", "tool_specs", "policies")
# Keywords draft-07 lacks; the gateway schema must not need them here.
NEWER_KEYWORDS = frozenset({"prefixItems", "unevaluatedProperties", "unevaluatedItems",
                            "dependentRequired", "dependentSchemas", "$defs", "$dynamicRef"})

_OBJ: dict[str, Any] = {"type": "object"}                      # a Kubernetes object, as is
_OBJ_LIST: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
_STR: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_PORT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABELS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_NULLABLE_SELECTOR: dict[str, Any] = {"type": ["object", "null"]}
# SECURITY: a NetworkPolicyPeer names something: {} is no peer (the API refuses it).
_PEER: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"ipBlock": {"type": "object", "required": ["cidr"],
                               "properties": {"cidr": {"type": "string", "minLength": 1}}},
                   "namespaceSelector": _OBJ, "podSelector": _OBJ}}
_PEERS: dict[str, Any] = {"type": "array", "items": _PEER}
# SECURITY: an egress rule with no `to` (`{}`, or only `ports`) allows every destination:
# each rule names at least one peer. (To open egress wide, say so: an ipBlock 0.0.0.0/0.)
_EGRESS_RULE: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["to"],
    "properties": {"to": {**_PEERS, "minItems": 1}, "ports": _OBJ_LIST},
    "description": "a NetworkPolicyEgressRule with at least one peer in `to`"}
# SECURITY: config.store is rendered into a ConfigMap, readable by whoever may read the
# namespace's ConfigMaps: a DSN with a password (in its user info or as ?password=) goes
# in a Secret instead (postgresql.dsnSecret). Helm shows the `const` as the error.
STORE_WITH_PASSWORD = r"^postgres(ql)?://[^/?#@]*:[^/?#]*@|[?&]password="
STORE_PASSWORD_REFUSED = ("a DSN without a password: the ConfigMap would show it; put the "
                          "whole DSN in a Secret and set postgresql.dsnSecret.name")


def _closed(properties: dict[str, Any], *, required: tuple[str, ...] = (),
            description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                              "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _image(*, repository_required: bool) -> dict[str, Any]:
    return _closed({
        "repository": {"type": "string", "minLength": 1 if repository_required else 0},
        "tag": _STR,
        "digest": {"type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$"},
        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    }, required=("repository",))


def _seccomp(*, required: bool) -> dict[str, Any]:
    # SECURITY: Unconfined is not in the enum.
    return _closed({"type": {"enum": ["RuntimeDefault", "Localhost"]},
                    "localhostProfile": _STR}, required=("type",) if required else ())


# SELinux types a container may run as: Pod Security Standards "baseline"'s list (no
# spc_t, unconfined_t or any other type that lifts the confinement).
SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t")


def _selinux() -> dict[str, Any]:
    # SECURITY: a type from the allow-list (or the runtime's, when unset); no user or role
    # (the baseline standard refuses them too); the MCS level is the operator's.
    return _closed({"type": {"enum": list(SELINUX_TYPES)}, "level": _STR},
                   description="SELinux: type one of " + ", ".join(SELINUX_TYPES))


def _apparmor() -> dict[str, Any]:
    # SECURITY: Unconfined is not in the enum.
    return _closed({"type": {"enum": ["RuntimeDefault", "Localhost"]},
                    "localhostProfile": _STR}, required=("type",))


def _hardened_container() -> dict[str, Any]:
    """A container the chart runs (the gateway, OPA): every hardening setting present and
    at its hardened value; only the uid/gid and the seccomp profile may be chosen."""
    return _closed({
        "runAsNonRoot": {"const": True},
        "runAsUser": {"type": "integer", "minimum": 1},
        "runAsGroup": {"type": "integer", "minimum": 1},
        "allowPrivilegeEscalation": {"const": False},
        "readOnlyRootFilesystem": {"const": True},
        "privileged": {"const": False},
        "capabilities": _closed({
            "drop": {"type": "array", "items": _STR, "contains": {"const": "ALL"}},
            "add": {"type": "array", "maxItems": 0},
        }, required=("drop",)),
        "seccompProfile": _seccomp(required=True),
    }, required=("runAsNonRoot", "runAsUser", "allowPrivilegeEscalation",
                 "readOnlyRootFilesystem", "privileged", "capabilities", "seccompProfile"),
        description="SECURITY: non-root, no privilege escalation, read-only root, no "
                    "capabilities, a seccomp profile; the schema refuses anything weaker")


def _agent_container() -> dict[str, Any]:
    """The agent's securityContext: the agent's own business, except what would let it
    reach into the gateway's pod (root, privilege, escalation)."""
    return {"type": "object", "properties": {
        "runAsNonRoot": {"const": True},
        "runAsUser": {"type": "integer", "minimum": 1},
        "runAsGroup": {"type": "integer", "minimum": 1},
        "allowPrivilegeEscalation": {"const": False},
        "privileged": {"const": False},
        "readOnlyRootFilesystem": _BOOL,
        "capabilities": _OBJ,
        "seccompProfile": _seccomp(required=True),
        # A container's own settings override the pod's: held to the same rules.
        "seLinuxOptions": _selinux(),
        "appArmorProfile": _apparmor(),
        "procMount": {"enum": ["Default"]},
        "windowsOptions": {"type": "object", "properties": {"hostProcess": {"const": False}}},
    }}


def _pod_security_context() -> dict[str, Any]:
    return _closed({
        "runAsNonRoot": {"const": True},
        "runAsUser": {"type": "integer", "minimum": 1},
        "runAsGroup": {"type": "integer", "minimum": 1},
        "fsGroup": {"type": "integer", "minimum": 1},
        "fsGroupChangePolicy": {"enum": ["OnRootMismatch", "Always"]},
        "supplementalGroups": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "supplementalGroupsPolicy": {"enum": ["Merge", "Strict"]},
        "seccompProfile": _seccomp(required=True),
        "seLinuxOptions": _selinux(),
        "seLinuxChangePolicy": {"enum": ["MountOption", "Recursive"]},
        "appArmorProfile": _apparmor(),
        "sysctls": _OBJ_LIST,
    }, required=("runAsNonRoot", "seccompProfile"),
        description="SECURITY: pod-wide; runAsNonRoot stays true")


def chart_config_schema() -> dict[str, Any]:
    """The gateway's config schema as the chart takes it in `config`."""
    schema = copy.deepcopy(CONFIG_SCHEMA)
    for key in CHART_OWNED_CONFIG:
        del schema["properties"][key]
    # The chart adds the key file from authKeys, so `auth` may name no key source here;
    # the template checks that exactly one results.
    del schema["properties"]["auth"]["oneOf"]
    # An empty default, so `helm lint` passes on the chart's defaults; the template
    # refuses an install without upstreams.
    del schema["properties"]["upstreams"]["minProperties"]
    schema["properties"]["store"].update({
        "if": {"pattern": STORE_WITH_PASSWORD}, "then": {"const": STORE_PASSWORD_REFUSED},
        "description": "a DSN without a password (postgresql.dsnSecret for one with)"})
    schema["description"] = ("toolgate.yaml (README, Config reference); listen, admin_listen, "
                             "tool_specs and policies are set by the chart")
    return schema


def _newer_keywords(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = NEWER_KEYWORDS & node.keys()
        for value in node.values():
            found |= _newer_keywords(value)
        return set(found)
    if isinstance(node, list):
        return set().union(*(_newer_keywords(item) for item in node)) if node else set()
    return set()


def values_schema() -> dict[str, Any]:
    """The whole values schema."""
    probes = {"startupProbe": _OBJ, "livenessProbe": _OBJ, "readinessProbe": _OBJ}
    gateway = _closed({
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": _image(repository_required=True),
        "ports": _closed({"http": _PORT, "admin": _PORT}, required=("http", "admin")),
        "nativeSidecar": _BOOL,
        "workers": {"type": "integer", "minimum": 1, "maximum": 64},
        "preStopSleepSeconds": {"type": ["integer", "null"], "minimum": 0, "maximum": 300},
        "env": _OBJ_LIST,
        "resources": _OBJ,
        "securityContext": _hardened_container(),
        **probes,
        "extraVolumeMounts": _OBJ_LIST,
    })
    opa = _closed({
        "enabled": _BOOL,
        "image": _image(repository_required=True),
        "port": _PORT,
        "diagnosticPort": _PORT,
        "logLevel": {"enum": ["debug", "info", "error"]},
        "resources": _OBJ,
        "securityContext": _hardened_container(),
        **probes,
    }, description="an OPA sidecar for policy.engine: opa, on 127.0.0.1 only")
    agent = _closed({
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": _image(repository_required=False),
        "command": {"type": "array", "items": _STR},
        "args": {"type": "array", "items": _STR},
        "gatewayUrlEnv": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "env": _OBJ_LIST,
        "envFrom": _OBJ_LIST,
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["containerPort"],
            "properties": {"containerPort": _PORT,
                           "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}},
        "livenessProbe": _OBJ,
        "readinessProbe": _OBJ,
        "resources": _OBJ,
        "securityContext": _agent_container(),
        "volumeMounts": _OBJ_LIST,
        "tmpVolume": _BOOL,
    })
    network_policy = _closed({
        "enabled": _BOOL,
        "adminFrom": _PEERS,
        "agentsFrom": _PEERS,
        "agentPortsFrom": {"type": ["array", "null"], "items": _PEER},
        "egress": _closed({"enabled": _BOOL, "to": {"type": "array", "items": _EGRESS_RULE}}),
        "agentEgress": _closed({"enabled": _BOOL,
                                "to": {"type": "array", "items": _EGRESS_RULE}}),
        "dns": _closed({"to": {**_PEERS, "minItems": 1}}),
    })
    duration = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
    monitoring = _closed({
        "scrapeAnnotations": _BOOL,
        "serviceMonitor": _closed({"enabled": _BOOL}),
        "podMonitor": _closed({"enabled": _BOOL}),
        "labels": _LABELS,
        "interval": duration,
        "scrapeTimeout": duration,
        "relabelings": _OBJ_LIST,
        "metricRelabelings": _OBJ_LIST,
    })
    int_percent_or_null = {"oneOf": [{"type": "integer", "minimum": 0},
                                     {"type": "string", "pattern": "^[0-9]+%$"},
                                     {"type": "null"}]}
    schema: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "toolgate chart values",
        "description": "Generated by `python -m tests.helm.values_schema`; edit that module.",
        **_closed({
            "mode": {"enum": ["sidecar", "standalone"]},
            "nameOverride": _STR,
            "fullnameOverride": _STR,
            "replicaCount": {"type": "integer", "minimum": 0},
            "strategy": _OBJ,
            "revisionHistoryLimit": {"type": "integer", "minimum": 0},
            "imagePullSecrets": _OBJ_LIST,
            "podAnnotations": _LABELS,
            "podLabels": _LABELS,
            "nodeSelector": _LABELS,
            "tolerations": _OBJ_LIST,
            "affinity": _OBJ,
            "topologySpreadConstraints": _OBJ_LIST,
            "priorityClassName": _STR,
            "serviceAccountName": _STR,
            "automountServiceAccountToken": _BOOL,
            "terminationGracePeriodSeconds": {"type": ["integer", "null"], "minimum": 1},
            "podSecurityContext": _pod_security_context(),
            "agent": agent,
            "agents": _closed({"podLabels": _LABELS, "namespaceSelector": _NULLABLE_SELECTOR}),
            "gateway": gateway,
            "opa": opa,
            "persistence": _closed({
                "enabled": _BOOL,
                "existingClaim": _STR,
                "emptyDir": _closed({"sizeLimit": {"type": ["string", "null"]}}),
            }),
            "extraVolumes": _OBJ_LIST,
            "config": chart_config_schema(),
            "authKeys": _closed({"jwks": _STR, "publicKeyPem": _STR}),
            "toolSpecs": {"type": "object", "additionalProperties": _STR},
            "policies": _closed({"rego": {"type": "object", "additionalProperties": _STR},
                                 "data": _STR}),
            "secretEnv": {"type": "object",
                          "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                          "additionalProperties": {"type": "string", "minLength": 1}},
            "secret": _closed({"create": _BOOL, "name": _STR,
                               "stringData": {"type": "object",
                                              "additionalProperties": _STR}}),
            "postgresql": _closed({"dsnSecret": _closed({
                "name": _STR, "key": {"type": "string", "minLength": 1}})}),
            "service": _closed({"enabled": _BOOL,
                                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                "annotations": _LABELS, "labels": _LABELS}),
            "podDisruptionBudget": _closed({
                "enabled": _BOOL,
                "maxUnavailable": int_percent_or_null,
                "minAvailable": int_percent_or_null,
            }),
            "autoscaling": _closed({
                "enabled": _BOOL,
                "minReplicas": {"type": "integer", "minimum": 1},
                "maxReplicas": {"type": "integer", "minimum": 1},
                "targetCPUUtilizationPercentage": {"type": ["integer", "null"],
                                                   "minimum": 1, "maximum": 100},
                "targetMemoryUtilizationPercentage": {"type": ["integer", "null"],
                                                      "minimum": 1, "maximum": 100},
                "behavior": _OBJ,
            }),
            "networkPolicy": network_policy,
            "monitoring": monitoring,
        }),
    }
    newer = _newer_keywords(schema)
    if newer:
        raise ValueError(f"draft-07 has no {sorted(newer)}: Helm would ignore them")
    return schema


def render() -> str:
    """The file's exact text."""
    return json.dumps(values_schema(), indent=2) + "\n"


def main() -> int:
    SCHEMA_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
