"""WebSocket mode, served as the bidirectional `Session` call: `response.create` frames in, events out, one
response at a time, with a connection-local cache so `store: false` chains work within the connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from switchboard.responses.v1 import events_pb2, items_pb2, response_pb2
from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.service.pipeline.turns import TurnRunner
from switchboard.shared.errors import ApiError

_FINISHED = {response_pb2.RESPONSE_STATUS_COMPLETED, response_pb2.RESPONSE_STATUS_INCOMPLETE}


def error_frame(error: ApiError) -> pb.SessionEvent:
    status = error.status_code
    if error.code == "previous_response_not_found":
        status = 400  # as the Open Responses WebSocket transport reports it
    payload = events_pb2.ErrorPayload(type=error.error_type, code=error.code, message=error.message)
    if error.param is not None:
        payload.param = error.param
    return pb.SessionEvent(error=pb.SessionError(status=status, error=payload))


def _check_frame(request: pb.CreateResponseRequest) -> ApiError | None:
    from switchboard.shared.errors import invalid

    for name in ("stream", "background"):
        if request.HasField(name):
            return invalid(f"'{name}' is not allowed in a WebSocket response.create frame.", name)
    if request.HasField("stream_options"):
        return invalid("'stream_options' is not allowed in a WebSocket response.create frame.", "stream_options")
    return None


async def session(runner: TurnRunner, frames: AsyncIterator[pb.SessionRequest], *, owner: str,
                  metadata: Sequence[tuple[str, Any]] | None,
                  admit: Callable[[pb.CreateResponseRequest], Awaitable[None]] | None = None,
                  ) -> AsyncIterator[pb.SessionEvent]:
    # Response id -> the whole context up to and including that response, for store:false continuations.
    cache: dict[str, list[items_pb2.Item]] = {}
    async for frame in frames:
        request = frame.create
        problem = _check_frame(request)
        if problem is not None:
            yield error_frame(problem)
            continue
        previous = request.previous_response_id if request.HasField("previous_response_id") else ""
        history = cache.get(previous) if previous else None
        try:
            if admit is not None:
                await admit(request)  # rate limits: a refused turn is a 429 error frame
            started = await runner.start(request, owner=owner, stream=True, timeout=None, metadata=metadata,
                                         history=history)
        except ApiError as error:
            if previous:
                cache.pop(previous, None)  # a failed continuation evicts its id
            yield error_frame(error)
            continue
        async for event in runner.run(started):
            yield pb.SessionEvent(event=event)
        response = started.engine.response
        if response.status in _FINISHED:
            context = list(started.prepared.history) + list(started.prepared.inputs) + list(response.output)
            cache[response.id] = context
        elif previous:
            cache.pop(previous, None)
