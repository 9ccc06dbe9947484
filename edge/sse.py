"""Server-sent event framing, and the failure events the edge adds when the service stream breaks."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from switchboard.edge import codec
from switchboard.edge.errors import HttpError
from switchboard.responses.v1 import events_pb2, response_pb2

DONE = b"data: [DONE]\n\n"
# {OpenAI name: Open Responses name} of the stream events the two specs spell differently.
OPEN_RESPONSES_NAMES = codec.open_responses_tags(events_pb2.StreamEvent.DESCRIPTOR)


def encode_event(message: Any, names: Mapping[str, str]) -> Any:
    """The JSON of an event (or of a frame holding one), its ``type`` renamed through ``names``."""
    data = codec.encode(message)
    if names and isinstance(data, dict) and (renamed := names.get(data.get("type", ""))) is not None:
        data["type"] = renamed
    return data


# "event: <type>\ndata: " per event type, built once.
_PREFIXES: dict[str, bytes] = {}


def frame(event: events_pb2.StreamEvent, names: Mapping[str, str] | None = None) -> bytes:
    data = encode_event(event, names or {})
    kind: str = data["type"]
    prefix = _PREFIXES.get(kind)
    if prefix is None:
        prefix = _PREFIXES[kind] = b"event: " + kind.encode() + b"\ndata: "
    return b"".join((prefix, orjson.dumps(data), b"\n\n"))


class StreamTracker:
    """Remembers the last sequence number and snapshot, so a broken stream can still end properly."""

    def __init__(self) -> None:
        self.next_sequence = 0
        self.snapshot: response_pb2.Response | None = None
        self.terminal = False

    def see(self, event: events_pb2.StreamEvent) -> None:
        self.next_sequence = event.sequence_number + 1
        arm = event.WhichOneof("event")
        if arm is not None and arm.startswith("response_"):
            self.snapshot = getattr(event, arm).response
            self.terminal = arm in ("response_completed", "response_failed", "response_incomplete")

    def failure(self, error: HttpError) -> bytes:
        """An ``error`` event followed by ``response.failed``."""
        payload = events_pb2.ErrorPayload(type=error.type, message=error.message)
        if error.code is not None:
            payload.code = error.code
        if error.param is not None:
            payload.param = error.param
        error_event = events_pb2.StreamEvent(sequence_number=self.next_sequence,
                                             error=events_pb2.ErrorEvent(error=payload, message=error.message,
                                                                         code=error.code, param=error.param))
        response = response_pb2.Response()
        if self.snapshot is not None:
            response.CopyFrom(self.snapshot)
        else:
            response.object, response.created_at = "response", int(time.time())
        response.status = response_pb2.RESPONSE_STATUS_FAILED
        # The detailed code is in the `error` event; a response's error code is from OpenAI's closed set.
        response.error.code = "server_error"
        response.error.message = error.message
        failed = events_pb2.StreamEvent(sequence_number=self.next_sequence + 1,
                                        response_failed=events_pb2.ResponseEvent(response=response))
        self.next_sequence += 2
        self.terminal = True
        return frame(error_event) + frame(failed)
