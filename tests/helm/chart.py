"""The chart as the tests see it: rendered by Helm itself (helm-python-sdk, Helm as a library,
no binary, no cluster) for each documented mode, at a chosen Kubernetes version.

The modes are the README's install commands: an example values file from
`helm/toolgate/examples/`, the repository's tool specs and policy through `--set-file`
(parsed by Helm's own `--set-file` parser), and the mode's few `--set` overrides.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "toolgate"
EXAMPLES = CHART / "examples"
RELEASE = "support"
NAMESPACE = "agents"
FULLNAME = f"{RELEASE}-toolgate"
SPECS = ("get_order", "lookup_customer", "add_ticket_note", "create_refund_request",
         "change_payroll_bank")
NATIVE_SIDECAR_MIN = "1.29.0"


def claimed_kube_range() -> tuple[str, str]:
    """The oldest Kubernetes the chart claims (Chart.yaml `kubeVersion: >=X`), and the
    newest it can be checked against (kubernetes-validate's newest schemas)."""
    claim = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", claim)
    if match is None:
        raise ValueError(f"Chart.yaml kubeVersion {claim!r} is not a plain '>=X.Y.Z-0'")
    return match.group(1), kubernetes_validate.utils.latest_version()


OLDEST, NEWEST = claimed_kube_range()


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of -f/--set layers: maps merge, null removes, anything else replaces."""
    for key, value in extra.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def set_files(*, jwks: bool) -> dict[str, Any]:
    """The README's `--set-file` arguments, read by Helm's parser from this checkout."""
    values: dict[str, Any] = {}
    pairs = [f"toolSpecs.{name}={ROOT / 'tool_specs' / f'{name}.yaml'}" for name in SPECS]
    pairs += [f"policies.rego.toolgate={ROOT / 'policies' / 'toolgate.rego'}",
              f"policies.data={ROOT / 'policies' / 'data.yaml'}"]
    for pair in pairs:
        _merge(values, helm_python.parse_set_file(pair))
    if jwks:
        # What `toolgate keys init keys/` writes; the chart only carries the text.
        values["authKeys"] = {"jwks": json.dumps({"keys": [{
            "kty": "RSA", "kid": "dev", "use": "sig", "alg": "RS256", "e": "AQAB", "n": "x"}]})}
    return values


def example(name: str) -> dict[str, Any]:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return helm_python.values_from_yaml(text)


@dataclass(frozen=True)
class Mode:
    """A documented way to install the chart."""
    files: tuple[str, ...]
    overrides: Mapping[str, Any]
    min_kube: str = OLDEST
    jwks: bool = True       # --set-file authKeys.jwks=keys/jwks.json (else config.auth.jwks_url)

    def values(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.files:
            _merge(values, example(name))
        _merge(values, set_files(jwks=self.jwks))
        _merge(values, json.loads(json.dumps(self.overrides)))
        if extra:
            _merge(values, json.loads(json.dumps(extra)))
        return values


_SHARED_STORE = {"postgresql": {"dsnSecret": {"name": "toolgate-postgres"}}}
MODES: dict[str, Mode] = {
    "sidecar": Mode(("values-demo.yaml",), {}),
    "sidecar-opa": Mode(("values-demo.yaml", "values-opa.yaml"), {}),
    "sidecar-native": Mode(("values-demo.yaml",), {"gateway": {"nativeSidecar": True}},
                           min_kube=NATIVE_SIDECAR_MIN),
    "sidecar-native-opa": Mode(("values-demo.yaml", "values-opa.yaml"),
                               {"gateway": {"nativeSidecar": True}},
                               min_kube=NATIVE_SIDECAR_MIN),
    # Three agent pods on one PostgreSQL, their admin ports behind a Service, monitored.
    "sidecar-shared-monitored": Mode(("values-demo.yaml",), {
        **_SHARED_STORE, "replicaCount": 3, "service": {"enabled": True},
        "monitoring": {"serviceMonitor": {"enabled": True}, "scrapeAnnotations": True}}),
    # The README's standalone command: HPA, PostgreSQL, ServiceMonitor, every policy on.
    "standalone": Mode(("values-standalone.yaml",), {}, jwks=False),
    # One replica on SQLite, the OPA sidecar, a PodMonitor, the JWKS mounted.
    "standalone-single-opa": Mode(("values-standalone.yaml", "values-opa.yaml"), {
        "postgresql": {"dsnSecret": {"name": ""}}, "autoscaling": {"enabled": False},
        "gateway": {"workers": 1},
        "config": {"auth": {"jwks_url": None}},
        "monitoring": {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": True}},
        "networkPolicy": {"egress": {"enabled": False}, "agentEgress": {"enabled": False}}}),
}


class RenderError(Exception):
    """Helm refused to render: a schema violation or a template's `fail`."""


@dataclass(frozen=True)
class Manifests:
    """One render: the objects by kind and name, and NOTES.txt."""
    objects: tuple[dict[str, Any], ...]
    notes: str

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        """The Deployment's pod spec."""
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def containers(self) -> Iterator[dict[str, Any]]:
        """Every container of the pod, init containers (native sidecars) included."""
        yield from self.pod.get("initContainers", [])
        yield from self.pod["containers"]

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.containers() if c["name"] == name)

    def config(self) -> dict[str, Any]:
        """The rendered toolgate.yaml."""
        text = self.one("ConfigMap")["data"]["toolgate.yaml"]
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded


def render_values(values: Mapping[str, Any], *, kube: str = NEWEST,
                  api_versions: tuple[str, ...] = (), chart_dir: Path = CHART) -> Manifests:
    """Render the chart with Helm as `helm template --kube-version` would.

    `Chart.render` of helm-python-sdk 0.2.2 has no Kubernetes version argument, but the C
    function it calls (helm-c's `helm_render`) takes `kube_version` and `api_versions` in
    its options, like `helm template --kube-version --api-versions`; this calls it directly.
    Helm checks the values against values.schema.json first, as an install does.
    """
    options = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{kube}",
               "api_versions": list(api_versions)}
    with helm_python.Chart.load(chart_dir) as chart:
        try:
            rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values),
                                           json.dumps(options))
        except (helm_python.HelmValuesError, helm_python.HelmRenderError) as exc:
            raise RenderError(str(exc)) from exc
    files: dict[str, str] = json.loads(rendered)
    objects = tuple(doc for path, text in sorted(files.items()) if not path.endswith(".txt")
                    for doc in yaml.safe_load_all(text) if doc)
    return Manifests(objects, files.get("toolgate/templates/NOTES.txt", ""))


def render_unchecked(values: Mapping[str, Any]) -> Manifests:
    """As `helm template --skip-schema-validation` would: the chart without its
    values.schema.json, so a test reaches the templates' own checks behind the schema's."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / CHART.name
        shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("values.schema.json"))
        return render_values(values, chart_dir=copy)


@functools.cache
def render_mode(mode: str, kube: str = NEWEST) -> Manifests:
    """A documented mode, rendered once per test session and Kubernetes version."""
    return render_values(MODES[mode].values(), kube=kube)
