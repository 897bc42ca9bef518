"""How a failed request looks in the OpenAI-compatible HTTP API: the one mapping from the gRPC API's status codes
to an HTTP status and OpenAI's error body `{"error": {"message", "type", "param", "code"}}`.

Both APIs fail with the same `ServiceError`s (overfill/serving/types.py); the HTTP status follows Google's
canonical gRPC-to-HTTP table (google.rpc.Code), so a client retries on HTTP exactly what it would retry on gRPC. One
exception: a prompt that cannot fit the context is RESOURCE_EXHAUSTED on gRPC but 400 `context_length_exceeded` here,
as OpenAI answers it (a 429 would make the OpenAI SDKs retry a request that can never succeed). `code` is the gRPC
status name in lower case unless OpenAI has a name of its own for the case.
"""

from __future__ import annotations

from overfill.serving.types import ContextLengthExceeded, ServiceError
from overfill.status import StatusCode

# StatusCode -> (HTTP status, OpenAI error type).
HTTP_STATUS: dict[StatusCode, tuple[int, str]] = {
    StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    StatusCode.NOT_FOUND: (404, "not_found_error"),
    StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    StatusCode.ABORTED: (409, "conflict_error"),
    StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    StatusCode.CANCELLED: (499, "cancelled"),  # the client went away; nobody reads this answer
    StatusCode.UNKNOWN: (500, "server_error"),
    StatusCode.INTERNAL: (500, "server_error"),
    StatusCode.DATA_LOSS: (500, "server_error"),
    StatusCode.UNIMPLEMENTED: (501, "server_error"),
    StatusCode.UNAVAILABLE: (503, "server_error"),
    StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}


class FieldError(ServiceError):
    """A refusal that names the request field at fault in OpenAI's `param` (and, optionally, OpenAI's own `code`
    for it, such as model_not_found)."""

    def __init__(self, code: StatusCode | str, message: str, param: str | None, openai_code: str | None = None):
        super().__init__(code, message)
        self.param, self.openai_code = param, openai_code

    def __reduce__(self):
        return type(self), (self.code, self.message, self.param, self.openai_code)


def invalid_field(param: str | None, message: str) -> FieldError:
    """INVALID_ARGUMENT for `param`; the message names it too (a client may show only the message)."""
    return FieldError(StatusCode.INVALID_ARGUMENT, message, param)


def openai_error(error: ServiceError) -> tuple[int, dict]:
    """(HTTP status, OpenAI error body) for a failed request."""
    status, kind = HTTP_STATUS[error.code]
    code = getattr(error, "openai_code", None) or error.code.value.lower()
    if isinstance(error, ContextLengthExceeded):
        status, kind, code = 400, "invalid_request_error", "context_length_exceeded"
    elif error.code == StatusCode.UNAUTHENTICATED:
        code = "invalid_api_key"
    return status, {"error": {"message": error.message, "type": kind, "param": getattr(error, "param", None),
                              "code": code}}
