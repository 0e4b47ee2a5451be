"""Hot reload: a changed policy serves the next call, a broken one is refused while the
old keeps answering, and every reload is a `policy_reload` record written before the swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.act.handle import handle
from gateway.core.errors import AuditUnavailable, BundleInvalid
from gateway.runtime import Runtime
from tests.support import records, tool_call, unwritable


async def _refund(rt: Runtime, token: str, amount: int, key: str) -> str:
    body = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD",
            "reason": "damaged", "amount": amount}
    call = tool_call(rt.bundles.current, "POST", "/billing/refunds", token=token, body=body,
                     headers={"Idempotency-Key": key}, request_id=f"req_{key}")
    await handle(call, rt.bundles.current, rt)
    (decision,) = [r for r in records(rt) if r["kind"] == "decision"
                   and r["decision_id"] == f"req_{key}"]
    return str(decision["action"])


async def test_a_changed_policy_decides_the_next_call(live: tuple[Runtime, Path],
                                                      agent_token: str) -> None:
    rt, policies = live
    assert await _refund(rt, agent_token, 150, "a") == "allow"
    old = rt.bundles.current
    data = policies / "data.yaml"
    data.write_text(data.read_text().replace("max: {USD: 200,", "max: {USD: 100,"))
    answer = await rt.reloader.reload("api")
    assert answer["status"] == "reloaded"
    assert (answer["previous_revision"], answer["policy_revision"]) == (
        old.revision, rt.bundles.current.revision)
    assert old.revision != rt.bundles.current.revision
    assert await _refund(rt, agent_token, 150, "b") == "require_approval"
    (reload,) = [r for r in records(rt) if r["kind"] == "policy_reload"]
    assert (reload["event"], reload["trigger"], reload["previous_revision"],
            reload["policy_revision"]) == ("accepted", "api", old.revision,
                                           rt.bundles.current.revision)
    decided = [r for r in records(rt) if r["kind"] == "decision"]
    assert [r["policy_revision"] for r in decided] == [old.revision,
                                                       rt.bundles.current.revision]


RULES = "package toolgate\n\nimport rego.v1\n\n"


@pytest.mark.parametrize(("broken", "says"), [
    ("package toolgate\n\ndecision := {\n",
     "toolgate.rego:4: expecting expression"),                             # a syntax error
    ("package other\n\nimport rego.v1\n\nx := 1\n",
     "not a valid rule path"),                                             # the wrong package
    (RULES + 'decision := {"action": "allow", "reasons": [is_strng(input.tool.name)]}\n',
     "toolgate.rego:5"),                                                   # unknown function
    (RULES + 'decision := {"action": "allow", "reasons": "ok"}\n',
     "reasons must be a list of strings"),                                 # the wrong shape
    (RULES + 'decision := {"action": "allow", "reasons": []} if input.nothing\n',
     "is undefined"),                                                      # never holds
])
async def test_a_broken_policy_is_refused_and_the_old_one_keeps_serving(
        live: tuple[Runtime, Path], agent_token: str, broken: str, says: str) -> None:
    rt, policies = live
    old = rt.bundles.current
    (policies / "toolgate.rego").write_text(broken)   # the shipped decision rule is gone
    with pytest.raises(BundleInvalid) as info:
        await rt.reloader.reload("sighup")
    assert info.value.status == 422 and info.value.extra["errors"]
    assert says in info.value.extra["errors"][0], info.value.extra["errors"]
    assert rt.bundles.current is old
    assert await _refund(rt, agent_token, 150, "c") == "allow"
    (reload,) = [r for r in records(rt) if r["kind"] == "policy_reload"]
    assert (reload["event"], reload["trigger"], reload["policy_revision"]) == (
        "refused", "sighup", old.revision)
    assert reload["errors"] == info.value.extra["errors"]


async def test_an_unchanged_bundle_is_said_and_kept(live: tuple[Runtime, Path]) -> None:
    rt, _ = live
    old = rt.bundles.current
    assert (await rt.reloader.reload("api"))["status"] == "unchanged"
    assert rt.bundles.current is old
    assert [r["event"] for r in records(rt) if r["kind"] == "policy_reload"] == ["unchanged"]


async def test_no_record_no_swap(live: tuple[Runtime, Path]) -> None:
    rt, policies = live
    old = rt.bundles.current
    data = policies / "data.yaml"
    data.write_text(data.read_text().replace("max: {USD: 200,", "max: {USD: 100,"))
    audit = rt.settings.audit.file
    assert audit is not None
    with unwritable(audit), pytest.raises(AuditUnavailable):
        await rt.reloader.reload("api")
    assert rt.bundles.current is old
