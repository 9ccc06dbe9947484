"""Bearer API-key authentication, as a gRPC server interceptor."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from switchboard.shared.crypto import key_id
from switchboard.shared.errors import ApiError, to_status

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

# Health checks and reflection stay open so probes and tools work without a key.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys]
        if not self._keys:
            log.warning("auth.api_keys is empty: the API is OPEN to anyone who can reach it")

    @property
    def open(self) -> bool:
        return not self._keys

    def check(self, token: str | None) -> ApiError | None:
        if self.open:
            return None
        if token is None:
            return ApiError(grpc.StatusCode.UNAUTHENTICATED, "missing_api_key",
                            "Missing API key: send 'Authorization: Bearer <key>'.")
        given = token.encode()
        # Compare against every key so timing does not reveal which one nearly matched.
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(given, key)
        if not valid:
            return ApiError(grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key", "Incorrect API key provided.")
        return None


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> None:
    status = to_status(error)
    await context.abort(
        error.status, error.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or self._keys.open or method.startswith(_OPEN_PREFIXES):
            return handler
        error = self._keys.check(bearer_token(handler_call_details.invocation_metadata))
        return handler if error is None else _deny(handler, error)


def _deny(handler: Handler, error: ApiError) -> Handler:
    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        # Response-streaming handlers must be async generators.
        await abort(context, error)
        return
        yield

    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(reject, **kwargs)


ANONYMOUS = "anonymous"


def owner_of(metadata: Sequence[tuple[str, Any]] | None, keys: ApiKeys) -> str:
    """Who owns what a request creates: the API key's id, or one shared owner when auth is open."""
    token = bearer_token(metadata)
    return key_id(token) if token is not None and not keys.open else ANONYMOUS
