"""Schemas for the Prometheus Operator's ServiceMonitor and PodMonitor
(monitoring.coreos.com/v1), which kubernetes-validate does not know (they are CRDs).

Written from the operator's CRD for the fields this chart can emit, and closed
(`additionalProperties: false`) everywhere the chart writes, so a misspelt field fails here
as the API server's structural schema would prune or refuse it.
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string"}
_DURATION: dict[str, Any] = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                             "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": _STR},
                   "matchExpressions": {"type": "array", "items": {"type": "object"}}},
}
_METADATA: dict[str, Any] = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                            "maxLength": 253},
                   "labels": {"type": "object", "additionalProperties": _STR},
                   "annotations": {"type": "object", "additionalProperties": _STR}},
}
_RELABEL: dict[str, Any] = {"type": "array", "items": {
    "type": "object", "additionalProperties": False,
    "properties": {"sourceLabels": {"type": "array", "items": _STR}, "separator": _STR,
                   "targetLabel": _STR, "regex": _STR, "modulus": {"type": "integer"},
                   "replacement": _STR,
                   "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop",
                                       "hashmod", "HashMod", "labelmap", "LabelMap",
                                       "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                       "lowercase", "Lowercase", "uppercase", "Uppercase",
                                       "keepequal", "KeepEqual", "dropequal", "DropEqual"]}}}}
_ENDPOINT: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["port"],
    "properties": {"port": _STR, "path": {"type": "string", "pattern": "^/"},
                   "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                   "interval": _DURATION, "scrapeTimeout": _DURATION,
                   "relabelings": _RELABEL, "metricRelabelings": _RELABEL},
}


def _monitor(kind: str, endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"},
                                       "matchNames": {"type": "array", "items": _STR}}},
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _monitor("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitor("PodMonitor", "podMetricsEndpoints"),
}
