"""The one place the edge maps a gRPC status to an HTTP status and the error JSON body."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2

_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
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
}


@dataclass
class HttpError:
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps({"error": self.payload()})

    def payload(self) -> dict[str, str | None]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def invalid_request(message: str, param: str | None, code: str = "invalid_request") -> HttpError:
    return HttpError(400, "invalid_request_error", message, code=code, param=param)


def from_rpc_error(error: grpc.aio.AioRpcError) -> HttpError:
    code = error.code()
    status, error_type = _HTTP.get(code, (500, "server_error"))
    message = error.details() or "internal server error"
    result = HttpError(status, error_type, message)
    details = _status_details(error)
    if details is None:
        # No details: the service itself is unreachable or failed outside the API's error handling.
        if code == grpc.StatusCode.UNAVAILABLE:
            result.message, result.code = "The service is unavailable, try again.", "service_unavailable"
        elif code not in _HTTP or code == grpc.StatusCode.UNKNOWN:
            result.message, result.code = "internal server error", "internal_error"
        return result
    for any_msg in details.details:
        if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_msg.Unpack(info)
            result.code = info.reason or None
            result.type = info.metadata.get("type", result.type)
            if "http_status" in info.metadata:
                result.status = int(info.metadata["http_status"])
            if "retry_after" in info.metadata:
                result.headers["retry-after"] = info.metadata["retry_after"]
        elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_msg.Unpack(bad)
            if bad.field_violations:
                result.param = bad.field_violations[0].field
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and result.code == "upstream_timeout":
        result.status = 504
    return result


def _status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None
