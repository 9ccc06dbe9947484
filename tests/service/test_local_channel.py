"""The in-process channel behaves as a grpc.aio channel to a real server: every scenario runs against both, with the
same handlers and interceptor, and must give the same messages, metadata, status codes and details."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from switchboard.shared.local_grpc import STREAM_WINDOW, serve_locally

SERVICE = "test.Echo"
S = StringValue


class Record:
    """What the handlers saw."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self.cancelled = asyncio.Event()
        self.closed = asyncio.Event()
        self.produced = 0
        self.remaining: float | None = -1.0


class Deny(grpc.aio.ServerInterceptor):
    """Refuses calls that carry `deny: yes`, as an auth interceptor does."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if ("deny", "yes") not in tuple(details.invocation_metadata or ()):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no entry")

        return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=S.FromString,
                                                   response_serializer=S.SerializeToString)


def handlers(record: Record) -> grpc.GenericRpcHandler:
    async def unary(request: S, context: grpc.aio.ServicerContext[Any, Any]) -> S:
        record.metadata = dict(tuple(context.invocation_metadata() or ()))
        record.remaining = context.time_remaining()
        if request.value == "abort":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad value",
                                trailing_metadata=(("detail-bin", b"\x00\x01"),))
        if request.value == "crash":
            raise ValueError("boom")
        if request.value == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                record.cancelled.set()
                raise
        await context.send_initial_metadata((("x-header", "h"),))
        return S(value=request.value.upper())

    async def stream(request: S, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[S]:
        try:
            for i in range(int(request.value)):
                record.produced = i + 1
                yield S(value=str(i))
        except asyncio.CancelledError:
            record.cancelled.set()
            raise
        finally:
            record.closed.set()

    async def chat(requests: AsyncIterator[S], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[S]:
        await context.send_initial_metadata(())
        async for request in requests:
            if request.value == "stop":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stopped")
            yield S(value=f"re:{request.value}")

    options = {"request_deserializer": S.FromString, "response_serializer": S.SerializeToString}
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **options),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, **options),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, **options),
    })


@pytest.fixture(params=["grpc", "local"])
async def channel(request: pytest.FixtureRequest) -> AsyncIterator[tuple[grpc.aio.Channel, Record]]:
    record = Record()
    if request.param == "local":
        yield serve_locally(lambda server: server.add_generic_rpc_handlers((handlers(record),)), [Deny()]), record
        return
    server = grpc.aio.server(interceptors=[Deny()])
    server.add_generic_rpc_handlers((handlers(record),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as real:
        yield real, record
    await server.stop(None)


def method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(channel, kind)(f"/{SERVICE}/{name}", request_serializer=S.SerializeToString,
                                  response_deserializer=S.FromString)


async def test_unary_reply_metadata_both_ways(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    call = method(chan, "Unary")(S(value="hi"), metadata=(("authorization", "Bearer k"),), timeout=5)
    assert (await call).value == "HI"
    assert dict(await call.initial_metadata())["x-header"] == "h"
    assert await call.code() == grpc.StatusCode.OK
    assert record.metadata["authorization"] == "Bearer k"
    assert record.remaining is not None and 4 < record.remaining < 5.5  # grpc.aio rounds the deadline up a little


async def test_no_deadline_leaves_no_time_limit(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    await method(chan, "Unary")(S(value="x"))
    assert record.remaining is None


async def test_abort_gives_code_details_and_trailing_metadata(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, _ = channel
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(chan, "Unary")(S(value="abort"))
    error = raised.value
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad value")
    assert dict(error.trailing_metadata() or ())["detail-bin"] == b"\x00\x01"


async def test_unexpected_exception_is_unknown(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, _ = channel
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(chan, "Unary")(S(value="crash"))
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    assert "boom" in (raised.value.details() or "")


async def test_interceptor_refuses(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(chan, "Unary")(S(value="hi"), metadata=(("deny", "yes"),))
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "no entry")
    assert record.metadata == {}, "the handler never ran"


async def test_unknown_method_is_unimplemented(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, _ = channel
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(chan, "Nope")(S(value="x"))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_deadline_cancels_the_handler(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await method(chan, "Unary")(S(value="slow"), timeout=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(record.cancelled.wait(), 5)


async def test_server_stream_in_order_then_eof(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    call = method(chan, "Stream", "unary_stream")(S(value="5"))
    assert [m.value async for m in call] == ["0", "1", "2", "3", "4"]
    assert await call.code() == grpc.StatusCode.OK
    await asyncio.wait_for(record.closed.wait(), 5)


async def test_cancelling_a_stream_cancels_the_handler(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, record = channel
    call = method(chan, "Stream", "unary_stream")(S(value="1000000"))
    assert (await call.read()).value == "0"
    assert call.cancel()
    await asyncio.wait_for(record.closed.wait(), 5)
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert call.done() and call.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_an_unread_stream_holds_its_handler_back() -> None:
    record = Record()
    chan = serve_locally(lambda server: server.add_generic_rpc_handlers((handlers(record),)))
    call = method(chan, "Stream", "unary_stream")(S(value="1000000"))
    await call.read()
    await asyncio.sleep(0.1)
    assert record.produced <= STREAM_WINDOW + 2, "flow control: the handler waits for its reader"
    call.cancel()
    await asyncio.wait_for(record.closed.wait(), 5)


async def test_bidirectional_stream(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, _ = channel
    call = method(chan, "Chat", "stream_stream")()
    await call.initial_metadata()
    await call.write(S(value="a"))
    assert (await call.read()).value == "re:a"
    await call.write(S(value="b"))
    await call.done_writing()
    assert (await call.read()).value == "re:b"
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_bidirectional_abort_ends_writes(channel: tuple[grpc.aio.Channel, Record]) -> None:
    chan, _ = channel
    call = method(chan, "Chat", "stream_stream")()
    await call.write(S(value="stop"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
        await call.write(S(value="more"))
