"""The bundle: specs and policies built by one function, every problem reported at once,
one revision over everything a call is judged by."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.bundle import BundleRef, load_bundle
from gateway.config import Settings
from gateway.core.errors import LoadErrors
from gateway.devtokens import DevKey
from tests.support import ROOT, config


def copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    specs, policies = tmp_path / "specs", tmp_path / "policies"
    shutil.copytree(ROOT / "tool_specs", specs)
    shutil.copytree(ROOT / "policies", policies)
    return specs, policies


def settings_for(tmp_path: Path, key: DevKey, specs: Path, policies: Path,
                 **extra: Any) -> Settings:
    return config(tmp_path, key, "http://127.0.0.1:9", tool_specs=[str(specs)],
                  policies=[str(policies)], **extra)


async def test_the_shipped_bundle(tmp_path: Path, dev_key: DevKey) -> None:
    specs, policies = copy_tree(tmp_path)
    bundle = load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    assert set(bundle.tools) == {"add_ticket_note", "change_payroll_bank",
                                 "create_refund_request", "get_order", "lookup_customer"}
    assert bundle.routes.match("POST", "/billing/refunds") is not None
    assert len(bundle.revision) == 16
    ref = BundleRef(bundle)
    assert ref.current is bundle
    await ref.close()


async def test_the_revision_covers_specs_and_policies(tmp_path: Path, dev_key: DevKey) -> None:
    specs, policies = copy_tree(tmp_path)
    first = load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    again = load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    assert first.revision == again.revision
    spec = specs / "get_order.yaml"
    spec.write_text(spec.read_text() + "\n# a comment is a change too\n")
    by_spec = load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    data = policies / "data.yaml"
    data.write_text(data.read_text().replace("USD: 200", "USD: 150"))
    by_data = load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    assert len({first.revision, by_spec.revision, by_data.revision}) == 3
    assert by_spec.policy_revision == first.policy_revision
    assert by_data.spec_revision == by_spec.spec_revision


def test_spec_and_policy_problems_are_reported_together(tmp_path: Path,
                                                        dev_key: DevKey) -> None:
    specs, policies = copy_tree(tmp_path)
    (specs / "broken.yaml").write_text("name: Bad Name\nupstream: billing\n")
    (policies / "broken.rego").write_text("package toolgate.extra\n\nthis is not rego\n")
    with pytest.raises(LoadErrors) as info:
        load_bundle(settings_for(tmp_path, dev_key, specs, policies))
    files = {Path(e.file).name for e in info.value.errors}
    assert {"broken.yaml", "broken.rego"} <= files


@pytest.mark.parametrize(("header", "why"), [
    ("Authorization", "never taken from the agent"),
    ("X-Forwarded-User", "never taken from the agent"),
    ("X-Api-Key", "credential header"),
])
def test_a_spec_cannot_forward_what_it_must_not(tmp_path: Path, dev_key: DevKey,
                                                header: str, why: str) -> None:
    specs, policies = copy_tree(tmp_path)
    spec = specs / "get_order.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("forward: {path:", f"forward: {{headers: [{header}], path:"))
    upstreams = {name: {"url": "http://127.0.0.1:9",
                        "credential": {"header": "X-Api-Key", "env": "KEY"}}
                 for name in ("crm", "billing", "hr", "echo")}
    with pytest.raises(LoadErrors) as info:
        load_bundle(settings_for(tmp_path, dev_key, specs, policies, upstreams=upstreams))
    assert why in str(info.value)
