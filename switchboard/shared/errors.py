"""Domain errors of the service, and the one place that turns them into a gRPC status."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "switchboard.responses.v1"

# gRPC code -> (HTTP status, API error type): the one table for the edge's answers, WebSocket error frames and
# the `type` of every error body (see docs/development.md, "Errors").
STATUS_MAP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (408, "timeout_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.CANCELLED: (499, "server_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}


# The codes OpenAI allows in a response's `error.code` (typed clients reject others); the detailed code of a failure
# travels in the stream's `error` event and in the error body of a unary call.
RESPONSE_ERROR_CODES = frozenset(("server_error", "rate_limit_exceeded", "invalid_prompt"))


def response_error_code(status: grpc.StatusCode, code: str) -> str:
    """The `error.code` of a failed response object: the failure's own code where OpenAI knows it, else its class."""
    if code in RESPONSE_ERROR_CODES:
        return code
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "rate_limit_exceeded"
    if status in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                  grpc.StatusCode.OUT_OF_RANGE):
        return "invalid_prompt"
    return "server_error"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ApiError(Exception):
    """An error a client may see: its message is safe to show."""

    def __init__(
        self,
        status: grpc.StatusCode,
        code: str,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        # Messages and params may quote client input; keep them small enough for gRPC trailers.
        message = _clip(message, 2000)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = _clip(param, 256) if param is not None else None
        self.retry_after = retry_after
        self.http_status = http_status

    @property
    def error_type(self) -> str:
        return STATUS_MAP.get(self.status, (500, "server_error"))[1]

    @property
    def status_code(self) -> int:
        """The HTTP status a client sees for this error."""
        return self.http_status or STATUS_MAP.get(self.status, (500, ""))[0]


def invalid(message: str, param: str | None, code: str = "invalid_request") -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, code, message, param=param)


class UpstreamError(ApiError):
    """An upstream provider failed. ``retryable`` failures may fall back to another model or endpoint."""

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retryable: bool = True,
        code: str = "upstream_error",
        status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        # An upstream that is down or broken is a 502 (a local model that is not serving says 503 itself); its
        # other statuses map as usual (400, 408, 429).
        if http_status is None and status == grpc.StatusCode.UNAVAILABLE:
            http_status = 502
        super().__init__(status, code, message, retry_after=retry_after, http_status=http_status)
        self.upstream_status = upstream_status
        self.retryable = retryable


def internal() -> ApiError:
    return ApiError(grpc.StatusCode.INTERNAL, "internal_error", "internal server error")


def to_status(err: ApiError) -> status_pb2.Status:
    """google.rpc.Status with ErrorInfo (reason = API error code) and, for a parameter, BadRequest."""
    metadata = {"type": err.error_type}
    if err.retry_after is not None:
        metadata["retry_after"] = f"{err.retry_after:g}"
    if err.http_status is not None:
        metadata["http_status"] = str(err.http_status)
    details = [error_details_pb2.ErrorInfo(reason=err.code, domain=DOMAIN, metadata=metadata)]
    if err.param is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=err.param, description=err.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    return status_pb2.Status(code=err.status.value[0], message=err.message, details=packed)

