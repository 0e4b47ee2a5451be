"""`handle`: one call's whole life — pipeline, decision record, then the act the verdict
names. Each path writes exactly one decision record first."""

from __future__ import annotations

from gateway.act.handle import handle, refuse
from gateway.core.call import ToolCall
from gateway.core.errors import ToolNotAllowed
from gateway.core.stage import Stage
from gateway.runtime import Runtime
from gateway.state.idempotency import Scope
from tests.support import Recorder, records, tool_call, unwritable

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}


def kinds(rt: Runtime, request_id: str) -> list[str]:
    return [r["kind"] for r in records(rt) if r["decision_id"] == request_id]


async def test_forward_hold_replay_and_refuse(rt: Runtime, agent_token: str,
                                              recorder: tuple[Recorder, str]) -> None:
    bundle = rt.bundles.current
    sent = await handle(tool_call(bundle, "POST", "/billing/refunds", token=agent_token,
                                  body={**REFUND, "amount": 20}, request_id="req_f",
                                  headers={"Idempotency-Key": "hd-1"}), bundle, rt)
    assert (sent.status, sent.decision) == (201, "allow")
    assert kinds(rt, "req_f") == ["decision", "outcome"]
    revisions = {r["policy_revision"] for r in records(rt) if r["decision_id"] == "req_f"}
    assert revisions == {bundle.revision}, "every record of a call names its bundle"
    again = await handle(tool_call(bundle, "POST", "/billing/refunds", token=agent_token,
                                   body={**REFUND, "amount": 20}, request_id="req_r",
                                   headers={"Idempotency-Key": "hd-1"}), bundle, rt)
    assert (again.status, again.body, again.headers["Idempotent-Replayed"]) == (
        201, sent.body, "true")
    assert kinds(rt, "req_r") == ["decision"]
    held = await handle(tool_call(bundle, "POST", "/billing/refunds", token=agent_token,
                                  body={**REFUND, "amount": 250}, request_id="req_h",
                                  headers={"Idempotency-Key": "hd-2"}), bundle, rt)
    assert (held.status, held.decision) == (202, "require_approval")
    assert kinds(rt, "req_h") == ["decision", "approval"]  # then: queued
    assert {r["policy_revision"] for r in records(rt) if r["decision_id"] == "req_h"} == {
        bundle.revision}
    denied = await handle(tool_call(bundle, "GET", "/echo/items/abc", request_id="req_d"),
                          bundle, rt)
    assert (denied.status, denied.decision) == (401, "deny")
    assert kinds(rt, "req_d") == ["decision"]
    assert len(recorder[0].seen) == 1, "only the allowed call reached the upstream"


async def test_a_refusal_at_the_entrance_is_decided_and_audited_the_same_way(
        rt: Runtime) -> None:
    facts = tool_call(rt.bundles.current, "GET", "/echo/items/abc", request_id="req_e").facts
    reply = refuse(facts, Stage.ROUTE, ToolNotAllowed("no tool"), rt.bundles.current,
                         rt)
    assert (reply.status, reply.decision) == (403, "deny")
    [record] = [r for r in records(rt) if r["decision_id"] == "req_e"]
    assert (record["stage"], record["code"], record["tool"]) == ("route", "tool_not_allowed",
                                                                 None)


async def test_no_decision_record_no_action(rt: Runtime, recorder: tuple[Recorder, str],
                                            agent_token: str) -> None:
    bundle = rt.bundles.current
    path = rt.settings.audit.file
    assert path is not None

    def call(request_id: str) -> ToolCall:
        return tool_call(bundle, "POST", "/state/items", token=agent_token, body={"name": "a"},
                         headers={"Idempotency-Key": "hd-3"}, request_id=request_id)

    with unwritable(path):   # every write fails, through the open descriptor too
        reply = await handle(call("req_refused"), bundle, rt)
        assert (reply.status, reply.body.count(b"audit_unavailable")) == (503, 1)
        assert recorder[0].seen == []
        # The key was given back: once the log is writable, the same call can run.
        assert await rt.store.key_state(Scope("acme", "keyed_post", "hd-3")) is None
    again = await handle(call("req_again"), bundle, rt)
    assert again.status == 201
    assert len(recorder[0].seen) == 1
    said = [r.get("event") or r["kind"] for r in records(rt, audit_events=True)]
    assert said == ["opened", "recovered", "decision", "outcome"], "what happened comes first"
    assert kinds(rt, "req_refused") == []
