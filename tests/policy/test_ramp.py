"""The autonomy ramp through the real pipeline: an over-limit refund runs without approval
when its call's bucket is under the tool's `auto_percent`, the metrics count it, and a
replay of recorded calls shows what a ramp step would have done."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.act.handle import handle
from gateway.devtokens import DevKey
from gateway.policy.replay import Candidate, replay
from gateway.runtime import Runtime
from tests.support import FakeClock, Recorder, records, runtime, tool_call

ROOT = Path(__file__).resolve().parents[2]


def _policies(directory: Path, percent: int) -> Path:
    shutil.copytree(ROOT / "policies", directory, dirs_exist_ok=True)
    data = directory / "data.yaml"
    data.write_text(data.read_text().replace("auto_percent: 0", f"auto_percent: {percent}"))
    return directory


@pytest.fixture
async def ramped(tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str],
                 clock: FakeClock) -> AsyncIterator[Runtime]:
    policies = _policies(tmp_path / "policies", 50)
    async with runtime(tmp_path, dev_key, recorder[1], clock,
                       policies=[str(policies)]) as rt:
        yield rt


async def test_half_the_over_limit_refunds_run_by_their_bucket(ramped: Runtime,
                                                               agent_token: str,
                                                               tmp_path: Path) -> None:
    for n in range(40):
        body = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
                "reason": "damaged", "amount": 250}
        call = tool_call(ramped.bundles.current, "POST", "/billing/refunds",
                         token=agent_token, body=body, headers={"Idempotency-Key": f"k{n}"},
                         request_id=f"req_{n}")
        await handle(call, ramped.bundles.current, ramped)
    decided = [r for r in records(ramped) if r["kind"] == "decision"]
    assert len(decided) == 40
    for record in decided:
        bucket = record["input"]["request"]["bucket"]
        expected = "allow" if bucket < 50 else "require_approval"
        assert record["action"] == expected, record
    allowed = [r for r in decided if r["action"] == "allow"]
    assert allowed and len(allowed) < 40
    assert all(r["reasons"][0].startswith("autonomy_ramp:") for r in allowed)
    exposition = ramped.metrics.exposition().decode()
    assert (f'toolgate_ramped_calls_total{{tool="create_refund_request"}} '
            f'{float(len(allowed))}') in exposition
    # Replay: what the next ramp step (100%) would do to these very calls.
    audit = ramped.settings.audit.file
    assert audit is not None
    step = replay([audit], Candidate([_policies(tmp_path / "step", 100)]), lambda p, n: None)
    assert step.changes == 40 - len(allowed)
    assert set(step.changed) == {"require_approval→allow"}
