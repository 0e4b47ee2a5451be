"""x-pii values end to end, under both redaction modes: sent through allow, hold (approved
and executed) and deny, refused by the schema, and found in no byte the gateway writes —
audit records (`args`, `input`), stdout, its store (but for the held call it must keep) and
the webhook it posts — while the upstream and the approver get them whole.

The canaries start `pii-canary-` (or `pii-held-canary-` for a held call): the session's
search (`tests/e2e/conftest.py`) looks for them in every byte again after the suite."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.audit.redact import REDACTED, Redactor
from gateway.devtokens import DevKey
from tests.audit.test_records import write_pii_bundle
from tests.e2e.approvals_support import admin, approver, wait_for
from tests.e2e.conftest import PII_CANARY, PII_HELD_CANARY, webhook_leaks, written_leaks
from tests.e2e.harness import Gateway, Reply, Upstream, running

KEY = "an-end-to-end-redaction-key-0123456789"
TOKEN = re.compile(r"^hmac:[0-9a-f]{32}$")


@pytest.fixture(scope="module", params=["mask", "hash"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
       dev_key: DevKey, upstream: Upstream) -> Iterator[Gateway]:
    """The PII tool under `audit.redaction: <mode>`; the hash gateway writes its records to
    stdout too. Its webhook, with the arguments included, goes to the recording upstream."""
    mode = str(request.param)
    directory = tmp_path_factory.mktemp(f"pii-{mode}")
    specs, policies = write_pii_bundle(directory / "bundle")
    audit: dict[str, Any] = {"file": "audit/toolgate.jsonl"}
    environ = {}
    if mode == "hash":
        audit.update(redaction="hash", redaction_key_env="PII_REDACTION_KEY", stdout=True)
        environ["PII_REDACTION_KEY"] = KEY
    gateway = Gateway(directory, dev_key, upstream.url, tool_specs=[specs],
                      policies=[policies], environ=environ, extra={
                          "audit": audit,
                          "approvals": {"sweep_interval_ms": 100, "wait_ms": 3000,
                                        "webhook": {"url": f"{upstream.url}/hooks/pii-{mode}",
                                                    "include_args": True,
                                                    "backoff_ms": 50}}})
    with running(gateway):
        yield gateway


def mode(gw: Gateway) -> str:
    return "hash" if gw.environ else "mask"


def canary(gw: Gateway, what: str, held: bool = False) -> str:
    prefix = (PII_HELD_CANARY if held else PII_CANARY).decode()
    return f"{prefix}{mode(gw)}-{what}"


def pii_call(gw: Gateway, token: str, who: str, amount: float, *, held: bool = False,
             key: str | None = None, **changes: Any) -> tuple[Reply, dict[str, Any]]:
    """A call of the PII tool whose customer, e-mail, card and memo are canaries."""
    body: dict[str, Any] = {
        "amount": amount, "email": f"{canary(gw, who, held)}@example.com",
        "cards": [{"number": canary(gw, f"{who}-card", held), "label": "main"}],
        "memo": canary(gw, f"{who}-memo", held), "note": "plain words", **changes}
    headers = {"Idempotency-Key": key} if key else None
    reply = gw.call("POST", f"/pii/customers/{canary(gw, f'{who}-id', held)}/notes",
                    token=token, body=body, headers=headers)
    return reply, body


def decision(gw: Gateway, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.records_for(reply.request_id) if r["kind"] == "decision"]
    return record


def redacted(gw: Gateway, value: Any, token: str) -> bool:
    """Whether `token` is what `value` is written as under this gateway's mode."""
    if mode(gw) == "mask":
        return token == REDACTED
    return bool(token == Redactor(KEY.encode()).token(value) and TOKEN.match(token))


def assert_redacted(gw: Gateway, record: dict[str, Any], body: dict[str, Any],
                    customer: str) -> None:
    for args in (record["args"], record["input"]["args"]):
        assert redacted(gw, customer, args["customer"])
        assert redacted(gw, body["email"], args["email"])
        assert redacted(gw, body["cards"][0]["number"], args["cards"][0]["number"])
        assert redacted(gw, body["memo"], args["memo"]), "the policy's redact pointer"
        assert (args["note"], args["amount"]) == ("plain words", body["amount"])
        assert args["cards"][0]["label"] == "main"
    assert record["input"]["request"]["path"].startswith("/pii/customers/")
    assert customer not in record["input"]["request"]["path"]
    assert record["redacted"] == ["/cards/0/number", "/customer", "/email", "/memo"]


def test_allow_hold_and_deny_never_write_a_pii_value(gw: Gateway, upstream: Upstream,
                                                     token: str, dev_key: DevKey) -> None:
    # allow: forwarded with the values, recorded without them
    allowed, body = pii_call(gw, token, "allow", 5, key=f"k-allow-{mode(gw)}")
    assert allowed.status == 200, allowed.raw
    assert any(body["email"].encode() in seen.body for seen in upstream.seen), \
        "the upstream gets the arguments whole"
    record = decision(gw, allowed)
    assert (record["action"], record["args_valid"], record["spend"]) == (
        "allow", True, {"amount": 5.0})
    assert_redacted(gw, record, body, canary(gw, "allow-id"))
    [outcome] = [r for r in gw.records_for(allowed.request_id) if r["kind"] == "outcome"]
    assert outcome["tool"] == "pii_note"
    replayed, _ = pii_call(gw, token, "allow", 5, key=f"k-allow-{mode(gw)}")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert decision(gw, replayed)["redacted"] == [""], "a replay's arguments: all redacted"

    # hold: the approver sees the values; the webhook and the records do not
    held, held_body = pii_call(gw, token, "hold", 50, held=True, key=f"k-hold-{mode(gw)}")
    assert held.status == 202, held.raw
    approval_id = held.json["approval_id"]
    assert_redacted(gw, decision(gw, held), held_body, canary(gw, "hold-id", True))
    retry, _ = pii_call(gw, token, "hold", 50, held=True, key=f"k-hold-{mode(gw)}")
    assert (retry.status, retry.json["approval_id"]) == (202, approval_id)
    assert decision(gw, retry)["args"] == decision(gw, held)["args"]
    boss = approver(dev_key, f"boss-{mode(gw)}")
    shown = admin(gw, "GET", f"/v1/approvals/{approval_id}", boss)
    assert shown.json["args"]["email"] == held_body["email"], "an approver sees what is sent"
    done = admin(gw, "POST", f"/v1/approvals/{approval_id}/approve", boss, {"comment": "ok"})
    assert done.status == 200, done.raw
    assert wait_for(lambda: admin(gw, "GET", f"/v1/approvals/{approval_id}",
                                  boss).json["status"] == "executed", what="execution")
    hooks = wait_for(lambda: webhooks(upstream, gw, approval_id, until="executed"),
                     what="the webhook of the execution")
    assert {h["toolgate"]["event"] for h in hooks} >= {"pending", "approved", "executed"}
    for hook in hooks:
        args = hook["toolgate"]["args"]
        assert redacted(gw, held_body["email"], args["email"])
        assert redacted(gw, held_body["memo"], args["memo"])
        assert redacted(gw, held_body["cards"][0]["number"], args["cards"][0]["number"])
        assert redacted(gw, canary(gw, "hold-id", True), args["customer"])
        assert args["note"] == "plain words"
    executed = [r for r in gw.records() if r.get("approval_id") == approval_id
                and r["kind"] == "outcome"]
    assert [r["tool"] for r in executed] == ["pii_note"]

    # deny, and a schema refusal: nothing of the values either
    denied, denied_body = pii_call(gw, token, "deny", 5000)
    assert (denied.status, denied.code) == (403, "policy_denied")
    assert_redacted(gw, decision(gw, denied), denied_body, canary(gw, "deny-id"))
    invalid, _ = pii_call(gw, token, "invalid", 5, email=canary(gw, "not-an-address"))
    assert (invalid.status, invalid.code) == (422, "schema_invalid")
    refused = decision(gw, invalid)
    assert (refused["args"], refused["input"], refused["args_valid"]) == (None, None, False)

    assert written_leaks(gw) == []
    assert webhook_leaks(upstream) == []


@pytest.mark.parametrize("gw", ["hash"], indirect=True)   # the mask writes all values alike
def test_hash_tokens_correlate_calls_across_a_restart(gw: Gateway, token: str) -> None:
    """The same value is the same token in every record, before and after a restart (the
    key is the same), and another value is another token."""
    first, body = pii_call(gw, token, "again", 1)
    gw.stop()
    gw.start()
    second, _ = pii_call(gw, token, "again", 2)
    other, other_body = pii_call(gw, token, "other", 3)
    assert first.status == second.status == other.status == 200
    one, two, three = (decision(gw, r)["args"] for r in (first, second, other))
    assert one["email"] == two["email"] == Redactor(KEY.encode()).token(body["email"])
    assert one["customer"] == two["customer"]
    assert three["email"] != one["email"]
    assert three["email"] == Redactor(KEY.encode()).token(other_body["email"])
    stdout = gw.log()
    assert one["email"] in stdout, "the stdout sink writes the same records"
    assert body["email"] not in stdout
    assert written_leaks(gw) == []


def webhooks(upstream: Upstream, gw: Gateway, approval_id: str,
             until: str) -> list[dict[str, Any]] | None:
    """The webhooks posted about a held call, once the one of event `until` is there."""
    found = [body for body in (json.loads(s.body) for s in list(upstream.seen)
                               if s.raw_path == f"/hooks/pii-{mode(gw)}")
             if body["toolgate"]["approval_id"] == approval_id]
    return found if any(h["toolgate"]["event"] == until for h in found) else None
