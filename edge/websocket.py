"""WebSocket mode on /v1/responses: `response.create` frames in, the same events as SSE out (one JSON object
per frame), bridged to the service's bidirectional `Session` call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from switchboard.edge import codec
from switchboard.edge.app import Edge
from switchboard.edge.errors import HttpError, from_rpc_error
from switchboard.edge.sse import encode_event
from switchboard.responses.v1 import responses_service_pb2 as pb

log = logging.getLogger(__name__)
# Open Responses caps a WebSocket connection at 60 minutes.
CONNECTION_LIMIT_SECONDS = 60 * 60


def _error_frame(status: int, code: str, message: str, error_type: str, param: str | None = None) -> str:
    return orjson.dumps({"type": "error", "status": status, "error": {
        "type": error_type, "code": code, "message": message, "param": param}}).decode()


def websocket_endpoint(edge: Edge, limit: float = CONNECTION_LIMIT_SECONDS) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        names = edge.names(websocket)
        await websocket.accept()
        if isinstance(names, HttpError):
            await _close(websocket, _error_frame(names.status, names.code or "error", names.message, names.type,
                                                 names.param))
            return
        call = edge.rpc.Session(metadata=edge.metadata(websocket))

        async def client_to_service() -> None:
            # The service sends headers at once, or ends a refused call: either way writes are safe after.
            await call.initial_metadata()
            while True:
                text = await websocket.receive_text()
                try:
                    frame = codec.loads(text.encode(), pb.SessionRequest)
                except codec.CodecError as exc:
                    await websocket.send_text(_error_frame(400, "invalid_request", exc.message,
                                                           "invalid_request_error", exc.param or None))
                    continue
                if call.done():
                    return  # the service ended the session (a refused key): the outbound side reports why
                try:
                    await call.write(frame)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    return  # the same, seen by a write that crossed the end of the call

        async def service_to_client() -> None:
            async for event in call:
                await websocket.send_text(orjson.dumps(encode_event(event, names)).decode())

        inbound = asyncio.create_task(client_to_service())
        outbound = asyncio.create_task(service_to_client())
        try:
            async with asyncio.timeout(limit):
                done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
                if inbound in done and inbound.exception() is None:
                    done = {inbound, outbound}
                    await outbound
            for task in done:
                task.result()
        except TimeoutError:
            await _close(websocket, _error_frame(400, "websocket_connection_limit_reached",
                                                 "The connection reached its 60-minute limit; open a new one.",
                                                 "invalid_request_error"))
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            await _close(websocket, _error_frame(error.status, error.code or "error", error.message, error.type,
                                                 error.param))
        except WebSocketDisconnect:
            pass
        finally:
            inbound.cancel()
            outbound.cancel()
            call.cancel()
            await asyncio.gather(inbound, outbound, return_exceptions=True)

    return endpoint


async def _close(websocket: WebSocket, frame: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(frame)
        await websocket.close(code=1000)
