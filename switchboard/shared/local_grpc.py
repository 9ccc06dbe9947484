"""An in-process gRPC channel: a caller in the same process and event loop as a server's handlers calls them with
the semantics of a ``grpc.aio`` channel (server interceptors, metadata, deadlines, status codes with details,
cancellation, flow control) and none of the transport: no serialisation, no HTTP/2, no C-core queues.

The generated ``add_*Servicer_to_server`` functions register on :class:`LocalServer` as on a ``grpc.aio`` server,
and the generated stubs call through :class:`LocalChannel` as through a ``grpc.aio`` channel, so a client written
for gRPC (the edge) needs no change. Each call's handler runs in a task of its own, as on a gRPC server: cancelling
the call (or its deadline) cancels the handler. Messages are passed by reference: the caller must not change a
request after sending it, and the handler must not change a message after yielding it (both hold for protobuf
messages that are built, sent and forgotten).
See docs/decisions/0015-in-process-edge.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc.aio import AbortError, AioRpcError, Metadata
from opentelemetry import trace

log = logging.getLogger(__name__)

_END: Any = object()
# Messages a streaming handler may be ahead of its reader (gRPC's flow control, in messages rather than bytes).
STREAM_WINDOW = 16
Handler = Any  # grpc.RpcMethodHandler (its type arguments are the request and response types)
_tracer = trace.get_tracer(__name__)


@dataclass
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class LocalServer:
    """Collects method handlers the way ``grpc.aio.Server`` does, and finds the handler of a call through the
    server interceptors (first interceptor outermost, as on a gRPC server)."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self._interceptors = tuple(interceptors)
        self._methods: dict[str, Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, Handler]) -> None:
        for name, handler in method_handlers.items():
            self._methods[f"/{service_name}/{name}"] = handler

    async def _lookup(self, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._methods.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    async def handler(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Handler | None:
        details = _CallDetails(method, metadata)

        async def chain(index: int, call_details: grpc.HandlerCallDetails) -> Handler | None:
            if index == len(self._interceptors):
                return await self._lookup(call_details)
            return await self._interceptors[index].intercept_service(
                lambda d: chain(index + 1, d), call_details)

        return await chain(0, details)


class _Pipe:
    """A bounded FIFO between two tasks that can be closed from either end."""

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._limit = limit
        self._closed = False
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item: Any) -> bool:
        """False when the pipe was closed (the item is dropped)."""
        while len(self._items) >= self._limit and not self._closed:
            self._putter = asyncio.get_running_loop().create_future()
            await self._putter
        if self._closed:
            return False
        self._items.append(item)
        self._wake(self._getter)
        return True

    async def get(self) -> Any:
        """The next item, or ``_END`` once the pipe is closed and empty."""
        while not self._items:
            if self._closed:
                return _END
            self._getter = asyncio.get_running_loop().create_future()
            await self._getter
        item = self._items.popleft()
        self._wake(self._putter)
        return item

    def close(self) -> None:
        self._closed = True
        self._wake(self._getter)
        self._wake(self._putter)


_CLOSED = _Pipe(0)
_CLOSED.close()


class _Context(grpc.aio.ServicerContext[Any, Any]):
    """What a handler sees of its call."""

    def __init__(self, call: _LocalCall, metadata: tuple[tuple[str, Any], ...]) -> None:
        self._call = call
        self._metadata = Metadata.from_tuple(metadata)
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self.code_: grpc.StatusCode | None = None
        self.details_: str | None = None

    async def read(self) -> Any:
        message = await self._call._requests.get()
        return grpc.aio.EOF if message is _END else message

    async def write(self, message: Any) -> None:
        await self._call._send(message)

    async def send_initial_metadata(self, initial_metadata: Iterable[tuple[str, Any]]) -> None:
        if self._call._initial.done():
            raise grpc.aio.UsageError("Initial metadata was already sent.")
        self._call._initial.set_result(Metadata.from_tuple(tuple(initial_metadata)))

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Iterable[tuple[str, Any]] = ()) -> NoReturn:
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN  # as grpc.aio: an abort is never a success
        self.code_, self.details_ = code, details
        self._trailing = tuple(trailing_metadata)
        raise AbortError("Locally aborted.")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Iterable[tuple[str, Any]]) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def set_compression(self, compression: grpc.Compression) -> None:
        pass  # nothing is transmitted

    def disable_next_message_compression(self) -> None:
        pass

    def peer(self) -> str:
        return "local"

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None without a deadline, as grpc.aio
        return self._call.time_remaining()

    def trailing_metadata(self) -> Metadata:
        return Metadata.from_tuple(self._trailing)

    def code(self) -> grpc.StatusCode | None:  # type: ignore[override]  # None until set, as in grpc.aio
        return self.code_

    def details(self) -> str | None:  # type: ignore[override]  # None until set, as in grpc.aio
        return self.details_

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _: callback(self))

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def done(self) -> bool:
        return self._call.done()


class _LocalCall:
    """One call: the handler's task, its status, and the pipes between caller and handler."""

    def __init__(self, server: LocalServer, method: str, request: Any, request_stream: bool, response_stream: bool,
                 timeout: float | None, metadata: Sequence[tuple[str, Any]] | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._deadline = None if timeout is None else loop.time() + timeout
        self._initial: asyncio.Future[Metadata] = loop.create_future()
        # A unary request has nothing to stream: the shared closed pipe stands in (reads end, writes fail).
        self._requests = _Pipe(STREAM_WINDOW) if request_stream else _CLOSED
        self._responses = _Pipe(STREAM_WINDOW)
        self._response_stream = response_stream
        self._result: Any = None
        self._status: AioRpcError | None = None  # set once done; code OK on success
        self._done: asyncio.Future[None] = loop.create_future()
        self._cancelled_here = False  # cancel() was called: reads and awaits raise CancelledError, as grpc.aio's
        self._expired = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._metadata = tuple(metadata or ())
        self._context = _Context(self, self._metadata)
        self._task = loop.create_task(self._run(server, method, request, request_stream))
        self._task.add_done_callback(self._finish)
        self._timer = None if self._deadline is None else loop.call_at(self._deadline, self._expire)

    # ---------------------------------------------------------------- the handler's side

    async def _send(self, message: Any) -> None:
        if not self._initial.done():
            self._initial.set_result(Metadata())
        await self._responses.put(message)  # closed only once the handler has ended

    async def _run(self, server: LocalServer, method: str, request: Any, request_stream: bool) -> None:
        handler = await server.handler(method, self._metadata)
        if handler is None:
            await self._context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if (handler.request_streaming, handler.response_streaming) != (request_stream, self._response_stream):
            await self._context.abort(grpc.StatusCode.INTERNAL, f"{method} streams otherwise on the server")
        argument = self._request_iterator() if request_stream else request
        behaviour = _behaviour(handler, request_stream, self._response_stream)
        with _server_span(method):
            if not self._response_stream:
                self._result = await behaviour(argument, self._context)
                return
            produced = behaviour(argument, self._context)
            if not hasattr(produced, "__aiter__"):
                await produced  # a handler that writes through context.write()
                return
            try:
                async for message in produced:
                    await self._send(message)
            finally:
                await produced.aclose()  # its cleanup runs now, not when it is collected

    async def _request_iterator(self) -> AsyncIterator[Any]:
        while (message := await self._requests.get()) is not _END:
            yield message

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def _finish(self, task: asyncio.Task[None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        context = self._context
        if task.cancelled():
            if self._expired:
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            else:
                code, details = grpc.StatusCode.CANCELLED, "Locally cancelled by application!"
        elif isinstance(error := task.exception(), AbortError):
            code, details = context.code_ or grpc.StatusCode.UNKNOWN, context.details_ or ""
        elif error is not None:
            log.error("Unexpected error in the %s handler", type(error).__name__, exc_info=error)
            code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(error)}: {error}"
        else:
            code, details = context.code_ or grpc.StatusCode.OK, context.details_ or ""
        initial = self._initial.result() if self._initial.done() else Metadata()
        if not self._initial.done():
            self._initial.set_result(initial)
        self._status = AioRpcError(code, initial, context.trailing_metadata(), details)
        self._requests.close()
        self._responses.close()
        self._done.set_result(None)
        for callback in self._callbacks:
            callback(self)

    # ---------------------------------------------------------------- the caller's side

    def _failure(self) -> AioRpcError | None:
        status = self._status
        return status if status is not None and status.code() != grpc.StatusCode.OK else None

    def cancelled(self) -> bool:
        return self._status is not None and self._status.code() == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status is not None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - self._loop.time(), 0.0)

    def cancel(self) -> bool:
        if self._status is not None:
            return False
        self._cancelled_here = True
        self._task.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._status is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def _settled(self) -> AioRpcError:
        await asyncio.shield(self._done)
        assert self._status is not None
        return self._status

    async def initial_metadata(self) -> Metadata:
        return await asyncio.shield(self._initial)

    async def trailing_metadata(self) -> Metadata:
        return (await self._settled()).trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return (await self._settled()).code()

    async def details(self) -> str:
        return (await self._settled()).details() or ""

    async def wait_for_connection(self) -> None:
        return None

    async def _unary_result(self) -> Any:
        try:
            await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.cancel()  # the caller itself was cancelled: so is the call
            raise
        if self._cancelled_here:
            raise asyncio.CancelledError
        failure = self._failure()
        if failure is not None:
            raise failure
        return self._result

    async def read(self) -> Any:
        if self._cancelled_here:
            raise asyncio.CancelledError
        message = await self._responses.get()
        if message is not _END:
            return message
        await self._settled()
        failure = self._failure()
        if failure is not None:
            raise failure
        return grpc.aio.EOF

    async def _read_all(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    async def write(self, request: Any) -> None:
        if self._requests.closed and self._status is None:
            raise asyncio.InvalidStateError("RPC is half closed after calling done_writing.")
        if not await self._requests.put(request):
            await self._settled()
            raise self._failure() or asyncio.InvalidStateError("The RPC has already ended.")

    async def done_writing(self) -> None:
        self._requests.close()


class _UnaryUnaryCall(_LocalCall, grpc.aio.UnaryUnaryCall[Any, Any]):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._unary_result().__await__()


class _UnaryStreamCall(_LocalCall, grpc.aio.UnaryStreamCall[Any, Any]):
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read_all()


class _StreamUnaryCall(_LocalCall, grpc.aio.StreamUnaryCall[Any, Any]):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._unary_result().__await__()


class _StreamStreamCall(_LocalCall, grpc.aio.StreamStreamCall[Any, Any]):
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read_all()


def _behaviour(handler: Handler, request_stream: bool, response_stream: bool) -> Callable[..., Any]:
    if request_stream:
        return handler.stream_stream if response_stream else handler.stream_unary  # type: ignore[no-any-return]
    return handler.unary_stream if response_stream else handler.unary_unary  # type: ignore[no-any-return]


def _server_span(method: str) -> contextlib.AbstractContextManager[Any]:
    """The span a gRPC server's instrumentation would start for the call (none while tracing is not set up)."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return contextlib.nullcontext()
    service, _, name = method.lstrip("/").partition("/")
    return _tracer.start_as_current_span(method.lstrip("/"), kind=trace.SpanKind.SERVER, attributes={
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "switchboard.transport": "in-process"})


class _MultiCallable:
    def __init__(self, server: LocalServer, method: str, call: type[_LocalCall], request_stream: bool,
                 response_stream: bool) -> None:
        self._server = server
        self._method = method
        self._call = call
        self._request_stream = request_stream
        self._response_stream = response_stream

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Sequence[tuple[str, Any]] | None = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        call = self._call(self._server, self._method, request, self._request_stream, self._response_stream,
                          timeout, metadata)
        if self._request_stream and request is not None:
            asyncio.get_running_loop().create_task(_feed(call, request))
        return call


async def _feed(call: _LocalCall, requests: Any) -> None:
    """A request iterator given at call time: written, then half-closed."""
    try:
        if hasattr(requests, "__aiter__"):
            async for message in requests:
                await call.write(message)
        else:
            for message in requests:
                await call.write(message)
        await call.done_writing()
    except (AioRpcError, asyncio.InvalidStateError):
        pass


class LocalChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose calls run the handlers of a :class:`LocalServer` in this event loop."""

    def __init__(self, server: LocalServer) -> None:
        self._server = server

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        return None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await asyncio.Event().wait()  # a local channel never changes state

    async def channel_ready(self) -> None:
        return None

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _MultiCallable(self._server, method, _UnaryUnaryCall, False, False)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _MultiCallable(self._server, method, _UnaryStreamCall, False, True)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _MultiCallable(self._server, method, _StreamUnaryCall, True, False)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _MultiCallable(self._server, method, _StreamStreamCall, True, True)


def serve_locally(register: Callable[[Any], None], interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
                  ) -> LocalChannel:
    """A channel to the handlers that ``register`` adds (it is given the server to add them to)."""
    server = LocalServer(interceptors)
    register(server)
    return LocalChannel(server)


__all__ = ["STREAM_WINDOW", "LocalChannel", "LocalServer", "serve_locally"]
