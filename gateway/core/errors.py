"""One error hierarchy: every rejection the gateway makes is a `GatewayError`.

The HTTP status and the machine-readable code live on the class; `gateway.app` is the one
place that turns them into JSON bodies. The codes are `ReasonCode` values, so the body, the
audit record and the metric label always agree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ReasonCode(StrEnum):
    """The `error.code` values of DESIGN §3, plus the gateway's own failure codes."""

    POLICY_DENIED = "policy_denied"
    POLICY_ERROR = "policy_error"
    TOOL_NOT_ALLOWED = "tool_not_allowed"
    UNAUTHENTICATED = "unauthenticated"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    SCHEMA_INVALID = "schema_invalid"
    INVALID_ARGUMENTS = "invalid_arguments"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    POLICY_UNAVAILABLE = "policy_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    NOT_FOUND = "not_found"
    SELF_APPROVAL = "self_approval"
    APPROVER_ROLE_REQUIRED = "approver_role_required"
    ALREADY_APPROVED_BY_YOU = "already_approved_by_you"
    APPROVAL_NOT_PENDING = "approval_not_pending"
    APPROVAL_EXPIRED = "approval_expired"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    OUTCOME_UNKNOWN = "outcome_unknown"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    BUDGET_EXCEEDED = "budget_exceeded"
    KILLED = "killed"
    INTERNAL_ERROR = "internal_error"
    BAD_REQUEST = "bad_request"
    REQUEST_TIMEOUT = "request_timeout"
    RATE_LIMITED = "rate_limited"
    OVER_CAPACITY = "over_capacity"
    BUNDLE_INVALID = "bundle_invalid"
    UNKNOWN_SCOPE = "unknown_scope"


MAX_QUOTE = 64  # characters of a caller's text an error message may quote


def quote(text: str) -> str:
    """A caller's text as an error message may quote it: in quotes, and cut to `MAX_QUOTE`
    characters. A message reaches the audit record, which must stay bounded whatever the
    request."""
    return repr(text[:MAX_QUOTE]) + ("…" if len(text) > MAX_QUOTE else "")


class GatewayError(Exception):
    """A rejection with a status, a code and an agent-readable message.

    `extra` members are added to the error body (`details`, `reasons`, `fallback`, ...).
    """

    status: ClassVar[int] = 500
    code: ClassVar[ReasonCode] = ReasonCode.INTERNAL_ERROR

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "error": {
                "code": str(self.code),
                "message": self.message,
                "request_id": request_id,
                **self.extra,
            }
        }


class BadRequest(GatewayError):
    """What aiohttp's HTTP parser refused: not well-formed HTTP."""

    status = 400
    code = ReasonCode.BAD_REQUEST


class BundleInvalid(GatewayError):
    """A reload whose new bundle does not load: the old one keeps serving (`errors`)."""

    status = 422
    code = ReasonCode.BUNDLE_INVALID


class UnknownScope(GatewayError):
    """A kill switch for a tool (or tenant) the gateway does not know: a typo would stop
    nothing. `force` sets it all the same."""

    status = 422
    code = ReasonCode.UNKNOWN_SCOPE


class RequestTimeout(GatewayError):
    """The client did not send its body in time."""

    status = 408
    code = ReasonCode.REQUEST_TIMEOUT


class RateLimited(GatewayError):
    status = 429
    code = ReasonCode.RATE_LIMITED


class OverCapacity(GatewayError):
    """A connection past a port's cap (`gateway.listener`): answered before any request is
    read, so it is counted, never recorded."""

    status = 503
    code = ReasonCode.OVER_CAPACITY


class InvalidJson(GatewayError):
    status = 400
    code = ReasonCode.INVALID_JSON


class UnsupportedMediaType(GatewayError):
    status = 415
    code = ReasonCode.UNSUPPORTED_MEDIA_TYPE


class InvalidArguments(GatewayError):
    status = 400
    code = ReasonCode.INVALID_ARGUMENTS


class IdempotencyKeyRequired(GatewayError):
    status = 400
    code = ReasonCode.IDEMPOTENCY_KEY_REQUIRED


class IdempotencyKeyInvalid(GatewayError):
    status = 400
    code = ReasonCode.IDEMPOTENCY_KEY_INVALID


class BodyTooLarge(GatewayError):
    status = 413
    code = ReasonCode.BODY_TOO_LARGE


class Unauthenticated(GatewayError):
    status = 401
    code = ReasonCode.UNAUTHENTICATED


class InsufficientScope(GatewayError):
    status = 403
    code = ReasonCode.INSUFFICIENT_SCOPE


class ToolNotAllowed(GatewayError):
    status = 403
    code = ReasonCode.TOOL_NOT_ALLOWED


class PolicyDenied(GatewayError):
    status = 403
    code = ReasonCode.POLICY_DENIED


class NotFound(GatewayError):
    status = 404
    code = ReasonCode.NOT_FOUND


class SchemaInvalid(GatewayError):
    status = 422
    code = ReasonCode.SCHEMA_INVALID


class SelfApproval(GatewayError):
    status = 403
    code = ReasonCode.SELF_APPROVAL


class ApproverRoleRequired(GatewayError):
    status = 403
    code = ReasonCode.APPROVER_ROLE_REQUIRED


class AlreadyApprovedByYou(GatewayError):
    status = 409
    code = ReasonCode.ALREADY_APPROVED_BY_YOU


class ApprovalNotPending(GatewayError):
    status = 409
    code = ReasonCode.APPROVAL_NOT_PENDING


class ApprovalExpired(GatewayError):
    status = 409
    code = ReasonCode.APPROVAL_EXPIRED


class IdempotencyKeyReused(GatewayError):
    status = 422
    code = ReasonCode.IDEMPOTENCY_KEY_REUSED


class IdempotencyInFlight(GatewayError):
    status = 409
    code = ReasonCode.IDEMPOTENCY_IN_FLIGHT


class BudgetExceeded(GatewayError):
    status = 429
    code = ReasonCode.BUDGET_EXCEEDED


class Killed(GatewayError):
    status = 403
    code = ReasonCode.KILLED


class OutcomeUnknown(GatewayError):
    status = 502
    code = ReasonCode.OUTCOME_UNKNOWN


class UpstreamError(GatewayError):
    status = 502
    code = ReasonCode.UPSTREAM_ERROR


class UpstreamUnreachable(UpstreamError):
    """The upstream could not be connected to: nothing of the call was sent, so it is known
    not to have run (a timeout or a broken answer may have run)."""


class PolicyUnavailable(GatewayError):
    status = 503
    code = ReasonCode.POLICY_UNAVAILABLE


class StoreUnavailable(GatewayError):
    status = 503
    code = ReasonCode.STORE_UNAVAILABLE


class AuditUnavailable(GatewayError):
    status = 503
    code = ReasonCode.AUDIT_UNAVAILABLE


class UpstreamTimeout(GatewayError):
    status = 504
    code = ReasonCode.UPSTREAM_TIMEOUT


class InternalError(GatewayError):
    status = 500
    code = ReasonCode.INTERNAL_ERROR


class LoadError(Exception):
    """A config, spec or policy file that cannot be loaded; `str()` is `file:line: message`."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {message}")


class LoadErrors(Exception):
    """Every problem found while loading, so `toolgate check` can report them all at once."""

    def __init__(self, errors: list[LoadError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
