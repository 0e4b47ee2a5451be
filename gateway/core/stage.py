"""The stages a call passes, by name: the `stage` of every decision record."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    # At the entrance, before there is a tool call.
    ROUTE = "route"                # which tool; path parameters; one value per argument
    PARSE = "parse"                # the body: size, media type, JSON
    # The pipeline (gateway.pipeline.STAGES, in this order).
    AUTHENTICATE = "authenticate"
    KILLSWITCH = "killswitch"
    SCOPES = "scopes"
    IDEMPOTENCY = "idempotency"
    VALIDATE = "validate"
    PLAN = "plan"
    USAGE = "usage"
    POLICY = "policy"
    COMMIT = "commit"              # the key and the budget, or the held call, taken
    # A failure the gateway did not expect (the record says so; the call is denied).
    INTERNAL = "internal"
