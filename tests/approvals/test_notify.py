"""The approval webhook's payload: Slack-compatible, without the arguments by default, and
with them redacted as the audit log redacts them when `include_args` is set."""

from __future__ import annotations

import json

from gateway.approvals.notify import payload
from gateway.audit.redact import MASK, REDACTED, Redactor
from gateway.store.rows import APPROVAL_COLUMNS, approval_from_row, approval_row
from tests.approvals.test_rules import held

KEY = b"k" * 32


def test_payload_leaves_arguments_out_by_default() -> None:
    body = payload("pending", held(), include_args=False, redactor=MASK)
    assert "args" not in body["toolgate"]
    assert "a@b.c" not in str(body)
    assert "create_refund_request" in body["text"]
    assert "toolgate approvals approve apr_1" in body["text"]


def test_included_arguments_are_redacted_at_the_held_calls_pointers() -> None:
    """The spec's x-pii fields and the decision's `redact` pointers, kept with the held
    call, are what a chat channel never sees; the rest is shown."""
    call = held(args={"amount": 250, "customer_email": "a@b.c",
                      "lines": [{"card": "4111"}, {"card": "5500"}], "memo": "vip"},
                redact=("/customer_email", "/lines/*/card", "/memo"))
    args = payload("pending", call, include_args=True, redactor=MASK)["toolgate"]["args"]
    assert args == {"amount": 250, "customer_email": REDACTED,
                    "lines": [{"card": REDACTED}, {"card": REDACTED}], "memo": REDACTED}
    text = json.dumps(payload("approved", call, include_args=True, redactor=MASK))
    assert not any(secret in text for secret in ("a@b.c", "4111", "5500", "vip"))
    assert call.args["customer_email"] == "a@b.c", "the held call itself is kept whole"


def test_included_arguments_take_the_audit_logs_hash_tokens() -> None:
    """With `redaction: hash` a notification names a value by the same token as the audit
    log, so the two can be matched without either showing it."""
    redactor = Redactor(KEY)
    call = held(redact=("/customer_email",))
    args = payload("pending", call, include_args=True, redactor=redactor)["toolgate"]["args"]
    assert args == {"amount": 250, "customer_email": redactor.token("a@b.c")}
    assert args["customer_email"].startswith("hmac:")


def test_a_call_held_without_kept_pointers_is_redacted_whole() -> None:
    """A call held before the pointers were kept (the store reads it back with `""`)."""
    args = payload("pending", held(redact=("",)), include_args=True,
                   redactor=MASK)["toolgate"]["args"]
    assert args == REDACTED


def test_the_pointers_survive_the_store_and_old_rows_hide_everything() -> None:
    """The pointers travel in the held call's stored `call` document; a row written before
    they were kept reads back as "redact everything" (fail closed)."""
    call = held(redact=("/customer_email", "/lines/*/card"))
    row = approval_row(call)[:len(APPROVAL_COLUMNS)]
    assert approval_from_row(row).redact == ("/customer_email", "/lines/*/card")
    doc_at = APPROVAL_COLUMNS.index("call")
    old_doc = json.loads(row[doc_at])
    del old_doc["redact"]
    old = (*row[:doc_at], json.dumps(old_doc).encode(), *row[doc_at + 1:])
    assert approval_from_row(old).redact == ("",)
    assert payload("pending", approval_from_row(old), include_args=True,
                   redactor=MASK)["toolgate"]["args"] == REDACTED
