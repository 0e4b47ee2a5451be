"""Replay: a recorded mix of real calls re-decided by candidate bundles — the same policy
changes nothing, a stricter one makes exactly the expected transitions, calls that never
reached the policy are not replayed, and the command is a CI gate."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.act.handle import handle
from gateway.cli.main import main
from gateway.core.errors import LoadErrors
from gateway.policy.replay import Candidate, Replay, replay
from gateway.runtime import Runtime
from tests.support import tool_call

ROOT = Path(__file__).resolve().parents[2]


def refund(amount: float) -> dict[str, Any]:
    return {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
            "reason": "damaged", "amount": amount}


async def _mix(rt: Runtime, token: str) -> dict[str, str]:
    """The recorded traffic; the request id of each call by what it is."""
    calls = {
        "refund-120": ("POST", "/billing/refunds", refund(120), {"Idempotency-Key": "a"}),
        "refund-150": ("POST", "/billing/refunds", refund(150), {"Idempotency-Key": "b"}),
        "refund-250": ("POST", "/billing/refunds", refund(250), {"Idempotency-Key": "c"}),
        "lookup": ("GET", "/crm/customers/cus_1001", None, {}),
        "other-tenant": ("GET", "/crm/customers/cus_1001", None, {}),
        "payroll": ("PUT", "/payroll/employees/emp_1001/bank-account",
                    {"tenant_id": "acme", "iban": "DE89370400440532013000"},
                    {"Idempotency-Key": "e"}),
        "no-amount": ("POST", "/billing/refunds",
                      {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
                       "reason": "damaged"}, {"Idempotency-Key": "d"}),
    }
    for name, (method, path, body, headers) in calls.items():
        query = f"tenant_id={'globex' if name == 'other-tenant' else 'acme'}" \
            if method == "GET" else ""
        call = tool_call(rt.bundles.current, method, path, token=token, body=body,
                         headers=headers, query=query, request_id=f"req_{name}")
        await handle(call, rt.bundles.current, rt)
    return {name: f"req_{name}" for name in calls}


@pytest.fixture
async def recorded(rt: Runtime, agent_token: str) -> Path:
    await _mix(rt, agent_token)
    path = rt.settings.audit.file
    assert path is not None
    return path


def _strict(tmp_path: Path) -> Path:
    """The shipped policy with refunds held over $100 instead of $200."""
    strict = tmp_path / "strict"
    shutil.copytree(ROOT / "policies", strict, dirs_exist_ok=True)
    data = strict / "data.yaml"
    data.write_text(data.read_text().replace("max: {USD: 200,", "max: {USD: 100,"))
    return strict


def _replay(path: Path, candidate: Candidate, **kwargs: Any) -> Replay:
    bad: list[tuple[Path, int]] = []
    result = replay([path], candidate, lambda p, n: bad.append((p, n)), **kwargs)
    assert bad == []
    return result


def test_the_same_policy_changes_nothing(recorded: Path) -> None:
    result = _replay(recorded, Candidate([ROOT / "policies"]))
    assert (result.decisions, result.replayed, result.not_replayable) == (7, 6, 1)
    assert result.changes == 0
    assert result.unchanged == {"allow": 3, "require_approval": 1, "deny": 2}
    assert result.with_redactions == 1      # the payroll call's IBAN (x-pii)


def test_a_stricter_limit_holds_exactly_the_refunds_over_it(recorded: Path,
                                                             tmp_path: Path) -> None:
    result = _replay(recorded, Candidate([_strict(tmp_path)]))
    assert result.changes == 2
    (key, transition), = result.changed.items()
    assert key == "allow→require_approval"
    assert sorted(transition.examples) == ["req_refund-120", "req_refund-150"]
    assert transition.reasons == {"over_limit": 2}
    assert result.unchanged == {"allow": 1, "require_approval": 1, "deny": 2}
    only = _replay(recorded, Candidate([_strict(tmp_path)]), tools=["lookup_customer"])
    assert (only.decisions, only.changes) == (2, 0)


def test_candidate_specs_change_the_tool_the_policy_sees(recorded: Path,
                                                         tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    shutil.copytree(ROOT / "tool_specs", specs)
    lookup = specs / "lookup_customer.yaml"
    lookup.write_text(lookup.read_text().replace("tier: green", "tier: red"))
    (specs / "change_payroll_bank.yaml").unlink()
    result = _replay(recorded, Candidate([ROOT / "policies"], [specs]))
    assert result.spec_revision is not None and result.tools_removed == 1
    assert result.changed["allow→deny"].examples == ["req_lookup"]
    assert result.changed["allow→deny"].reasons == {"red_tier": 1}
    assert "deny→deny" not in result.changed and result.unchanged["deny"] == 2


def test_a_candidate_that_does_not_load_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "p.rego").write_text("package toolgate\n\ndecision := {\n")
    with pytest.raises(LoadErrors):
        Candidate([broken])


def test_the_command_is_a_ci_gate(recorded: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--policies", str(ROOT / "policies"), "--fail-on-change",
                 str(recorded)], {}) == 0
    assert "changed: 0" in capsys.readouterr().out
    assert main(["replay", "--policies", str(_strict(tmp_path)), "--fail-on-change",
                 str(recorded)], {}) == 1
    out = capsys.readouterr().out
    assert "allow→require_approval" in out and "over_limit 2" in out
    assert main(["replay", "--policies", str(tmp_path / "none"), str(recorded)], {}) == 2
    assert "error:" in capsys.readouterr().err
