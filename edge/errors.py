"""The one place the edge maps a gRPC status to an HTTP status and the error JSON body."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2

from switchboard.shared.errors import STATUS_MAP


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
    status, error_type = STATUS_MAP.get(code, (500, "server_error"))
    message = error.details() or "internal server error"
    result = HttpError(status, error_type, message)
    details = _status_details(error)
    if details is None:
        # No details: the service itself is unreachable or failed outside the API's error handling.
        if code == grpc.StatusCode.UNAVAILABLE:
            result.message, result.code = "The service is unavailable, try again.", "service_unavailable"
        elif code not in STATUS_MAP or code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
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
