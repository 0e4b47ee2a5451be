"""`helm lint --strict` (Helm's own linter, through helm-python-sdk) on every documented mode,
at the oldest and newest Kubernetes the chart claims.

Helm lints templates in its lint mode, where a template's `fail` is logged rather than
raised: the chart's own refusals are tested by rendering (test_validate). Lint covers the
chart's metadata, the YAML every template produces, and values.schema.json.
"""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.helm.chart import CHART, MODES, NAMESPACE, NEWEST

INFO = 1     # helm-python-sdk's severities: 1 info, 2 warning, 3 error
CASES = [(mode, kube) for mode, spec in MODES.items() for kube in (spec.min_kube, NEWEST)]


def lint(values: dict[str, Any] | None, kube: str) -> dict[str, Any]:
    return helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE,
                            kube_version=f"v{kube}")


@pytest.mark.parametrize(("mode", "kube"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_every_mode_lints_clean(mode: str, kube: str) -> None:
    report = lint(MODES[mode].values(), kube)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Only information is left (Helm recommends an icon; there is none to point at).
    assert [m for m in report["messages"] if m["severity"] > INFO] == []


def test_the_defaults_lint_clean() -> None:
    report = lint(None, NEWEST)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > INFO] == []


def test_lint_applies_the_values_schema() -> None:
    report = lint(MODES["sidecar"].values({"gateway": {"ports": {"http": "abc"}}}), NEWEST)
    assert any("at '/gateway/ports/http': got string, want integer" in e
               for e in report["errors"]), report
