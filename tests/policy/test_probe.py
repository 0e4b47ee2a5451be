"""A policy that compiles but can never decide is a load error (`toolgate check`, start and
reload alike), found by evaluating the decision rule on a probe call of every tool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from gateway.bundle import load_bundle
from gateway.core.errors import LoadErrors
from gateway.devtokens import DevKey
from gateway.policy.probe import probe_input
from tests.support import config

RULES = 'package toolgate\n\nimport rego.v1\n\n'


def _errors(tmp_path: Path, dev_key: DevKey, rego: str) -> list[str]:
    policies = tmp_path / "candidate"
    policies.mkdir()
    (policies / "p.rego").write_text(rego)
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9", policies=[str(policies)])
    with pytest.raises(LoadErrors) as info:
        load_bundle(settings)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize(("rego", "says"), [
    ('package toolgat\n\ndecision := {"action": "allow", "reasons": []}\n',
     "not a valid rule path"),                                   # the wrong package
    (RULES + 'decision := {"action": "allow", "reasons": [is_strng(input.tool.name)]}\n',
     "could not find function is_strng"),                        # an unknown function
    (RULES + 'decision := {"action": "maybe", "reasons": []}\n',
     "no valid action"),                                         # the wrong shape
    (RULES + 'decision := {"action": "allow"} if input.tool.name == "nothing"\n',
     "undefined"),                                               # a rule that never holds
])
def test_a_policy_that_never_decides_does_not_load(tmp_path: Path, dev_key: DevKey,
                                                   rego: str, says: str) -> None:
    (error,) = _errors(tmp_path, dev_key, rego)
    assert "gives no decision on a probe call of" in error and says in error
    assert str(tmp_path / "candidate") in error


@pytest.mark.parametrize(("body", "says"), [
    ('decision := {"action": "allow", "reasons": [is_strng(input.tool.name)]}',
     "could not find function is_strng"),
    ('decision := {"action": "allow", "reasons": []} if {\n\tzzz == 1\n}',
     "use of undefined variable `zzz` is unsafe"),
])
def test_an_evaluation_error_is_reported_at_its_line(tmp_path: Path, dev_key: DevKey,
                                                      body: str, says: str) -> None:
    rego = RULES + "# a comment\n\n" + body + "\n"
    line = next(n for n, text in enumerate(rego.splitlines(), 1)
                if "is_strng" in text or "zzz" in text)
    (error,) = _errors(tmp_path, dev_key, rego)
    assert error.startswith(f"{tmp_path / 'candidate' / 'p.rego'}:{line}: "), error
    assert says in error


def test_a_policy_broken_for_one_tool_names_it_at_its_spec(tmp_path: Path,
                                                           dev_key: DevKey) -> None:
    rego = RULES + ('decision := {"action": "deny", "reasons": ["x"]} '
                    'if input.tool.name != "get_order"\n'
                    'decision := {"action": 1, "reasons": []} '
                    'if input.tool.name == "get_order"\n')
    (error,) = _errors(tmp_path, dev_key, rego)
    assert error.startswith(str(Path(__file__).resolve().parents[2] / "tool_specs"
                                / "get_order.yaml") + ":")
    assert "tool 'get_order'" in error and "no valid action" in error


def test_the_probe_looks_like_a_real_call(tmp_path: Path, dev_key: DevKey) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9")
    bundle = load_bundle(settings)
    probe = probe_input(bundle.tools["create_refund_request"])
    assert set(probe) == {"tool", "args", "principal", "run", "request"}
    assert set(probe["args"]) >= {"tenant_id", "order_id", "currency", "amount"}
    assert probe["principal"]["scopes"] == ["billing:refund"]
    assert 0 <= probe["request"]["bucket"] <= 99


def test_a_bundle_that_does_not_load_drops_its_engine_at_once(tmp_path: Path,
                                                              dev_key: DevKey) -> None:
    """The refused bundle's compiled engine is freed on the thread that built it, not left
    in the traceback for a garbage collection on another thread (which pyo3 reports)."""
    policies = tmp_path / "candidate"
    policies.mkdir()
    (policies / "p.rego").write_text(RULES + 'decision := {"action": "maybe", "reasons": []}\n')
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9", policies=[str(policies)])
    with pytest.raises(LoadErrors) as info:
        load_bundle(settings)
    frames = [tb.tb_frame for tb in _walk(info.value.__traceback__)]
    [loading] = [f for f in frames if f.f_code.co_name == "load_bundle"]
    assert loading.f_locals["engine"] is None


def _walk(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next
