"""The Responses gRPC servicer: thin handlers over the turn runner."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service.auth import abort
from service.errors import ApiError, internal
from service.turns import Started, TurnRunner
from switchboard.responses.v1 import events_pb2, response_pb2, responses_service_pb2, responses_service_pb2_grpc

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
OMITTED_TOOLS_HEADER = "x-switchboard-omitted-tools"


class ResponsesServicer(responses_service_pb2_grpc.ResponsesServicer):
    def __init__(self, runner: TurnRunner) -> None:
        self._runner = runner

    async def _start(self, request: responses_service_pb2.CreateResponseRequest, context: Context,
                     *, stream: bool) -> Started:
        started = await self._runner.start(request, stream=stream, timeout=context.time_remaining(),
                                           metadata=tuple(context.invocation_metadata() or ()))
        if started.prepared.omitted_tools:
            await context.send_initial_metadata(((OMITTED_TOOLS_HEADER, ",".join(started.prepared.omitted_tools)),))
        return started

    async def CreateResponse(  # noqa: N802 (gRPC method name)
        self, request: responses_service_pb2.CreateResponseRequest, context: Context
    ) -> response_pb2.Response:
        try:
            started = await self._start(request, context, stream=False)
            async for _ in self._runner.run(started):
                pass
            response = started.engine.response
            if response.status == response_pb2.RESPONSE_STATUS_FAILED:
                # A unary call has no stream to carry the failure: it is the call's status.
                raise ApiError(grpc.StatusCode.UNAVAILABLE, response.error.code, response.error.message,
                               http_status=502)
            return response
        except ApiError as error:
            await abort(context, error)
        except Exception:
            log.exception("CreateResponse failed")
            await abort(context, internal())
        raise AssertionError("unreachable: abort raises")

    async def StreamResponse(  # noqa: N802 (gRPC method name)
        self, request: responses_service_pb2.CreateResponseRequest, context: Context
    ) -> AsyncIterator[events_pb2.StreamEvent]:
        try:
            # The upstream's first delta comes before the first event, so a failure to start is a status
            # (an HTTP 4xx/5xx at the edge) rather than a failed stream.
            started = await self._start(request, context, stream=True)
        except ApiError as error:
            await abort(context, error)
            return
        except Exception:
            log.exception("StreamResponse failed before the first event")
            await abort(context, internal())
            return
        async for event in self._runner.run(started):
            yield event
