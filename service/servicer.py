"""The Responses gRPC servicer: resolve the request, run the provider through the turn engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from service import telemetry
from service.auth import abort
from service.config import Config
from service.crypto import Sealer
from service.engine import TurnEngine
from service.errors import ApiError, internal
from service.providers.base import Delta, Provider
from service.requests import Prepared, prepare
from switchboard.responses.v1 import (
    events_pb2,
    response_pb2,
    responses_service_pb2,
    responses_service_pb2_grpc,
)

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
OMITTED_TOOLS_HEADER = "x-switchboard-omitted-tools"


class ResponsesServicer(responses_service_pb2_grpc.ResponsesServicer):
    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self._config = config
        self._providers = providers
        self._sealer = Sealer(config.encryption_key)

    async def _prepare(self, request: responses_service_pb2.CreateResponseRequest, context: Context,
                       *, stream: bool) -> tuple[Prepared, Provider]:
        metadata = tuple(context.invocation_metadata() or ())
        telemetry.annotate(request, metadata)
        prepared = prepare(request, self._config, stream=stream, timeout=context.time_remaining(),
                           sealer=self._sealer)
        if prepared.omitted_tools:
            await context.send_initial_metadata(((OMITTED_TOOLS_HEADER, ",".join(prepared.omitted_tools)),))
        return prepared, self._providers[prepared.model.provider]

    async def CreateResponse(  # noqa: N802 (gRPC method name)
        self, request: responses_service_pb2.CreateResponseRequest, context: Context
    ) -> response_pb2.Response:
        try:
            prepared, provider = await self._prepare(request, context, stream=False)
            engine = TurnEngine(prepared.response, prepared.options)
            engine.start()
            async for delta in provider.stream(prepared.turn):
                engine.feed(delta)
            engine.finish()
            return engine.response
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
            prepared, provider = await self._prepare(request, context, stream=True)
        except ApiError as error:
            await abort(context, error)
            return
        deltas = provider.stream(prepared.turn)
        try:
            # Wait for the upstream's first delta before the first event, so that a failure to start
            # is a status (HTTP 4xx/5xx at the edge) rather than a failed stream.
            first: Delta | None = await anext(deltas, None)
        except ApiError as error:
            await deltas.aclose()
            await abort(context, error)
            return
        except Exception:
            log.exception("StreamResponse failed before the first event")
            await deltas.aclose()
            await abort(context, internal())
            return
        engine = TurnEngine(prepared.response, prepared.options)
        try:
            for event in engine.start():
                yield event
            if first is not None:
                for event in engine.feed(first):
                    yield event
                async for delta in deltas:
                    for event in engine.feed(delta):
                        yield event
            for event in engine.finish():
                yield event
        except ApiError as error:
            for event in engine.fail(error):
                yield event
        except Exception:
            log.exception("StreamResponse failed mid-stream")
            for event in engine.fail(internal()):
                yield event
        finally:
            await deltas.aclose()
