"""Wire conformance: every JSON body and stream event the gateway emits, checked the way strict clients parse it.

Three authorities, in order:
(a) openai-python's own pydantic models in strict mode (`Response`, `ResponseStreamEvent`, `ResponseItemList`,
    `CompactedResponse`), which is what a typed client does when it validates instead of `construct`s;
(b) the Open Responses OpenAPI (tests/openapi.py), with the event names the two spell differently mapped across;
(c) OpenRouter's own SDK, exercised separately in tests/e2e/test_wire.py.
Where (a) and (b) disagree, (a) wins and the difference is listed in docs/compatibility.md.

`Recorder` hooks into httpx (so the openai and openrouter SDKs, and raw httpx calls, are all covered), into the
websockets client and into gRPC channels (replies encoded by the edge's codec, as the edge would send them): every
reply from a registered gateway address is checked, and the violations are kept for the test to fail on
(tests/e2e/conftest.py does that for every end-to-end test).
"""

from __future__ import annotations

import json
import re
import threading
import typing
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import grpc
import httpx
from google.protobuf.message import Message
from httpx_sse import EventSource
from openai.types.responses import CompactedResponse, Response, ResponseItemList, ResponseStreamEvent
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from edge import codec
from tests import openapi

# {OpenAI name: Open Responses name} of the events the two specs spell differently.
OPEN_RESPONSES_NAMES = {
    "response.reasoning_text.delta": "response.reasoning.delta",
    "response.reasoning_text.done": "response.reasoning.done",
}
OPENAI_NAMES = {v: k for k, v in OPEN_RESPONSES_NAMES.items()}


class _ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str
    type: str
    param: str | None
    code: str | None


class _FrameErrorBody(_ErrorBody):
    headers: dict[str, str] = {}  # the Open Responses ErrorPayload's optional headers


class ErrorReply(BaseModel):
    """The error JSON of every 4xx/5xx answer: exactly `{"error": {message, type, param, code}}`."""
    model_config = ConfigDict(extra="forbid", strict=True)
    error: _ErrorBody


class DeletedReply(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str
    object: str
    deleted: bool


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _strict(kind: Any, data: Any) -> None:
    _adapter(kind).validate_python(data, strict=True)


@cache
def _event_models() -> dict[str, type[BaseModel]]:
    """openai-python's event model of each event `type` (its union is discriminated by `type`)."""
    union = typing.get_args(ResponseStreamEvent)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        for tag in typing.get_args(model.model_fields["type"].annotation):
            models[tag] = model
    return models


def _open_responses_view(response: Any) -> Any:
    """A response as (b) is asked to judge it: without the OpenAI features Open Responses lacks, each listed in
    docs/compatibility.md (namespace tools in the echoed `tools`)."""
    if isinstance(response, dict) and isinstance(response.get("tools"), list):
        tools = [t for t in response["tools"] if not (isinstance(t, dict) and t.get("type") == "namespace")]
        return {**response, "tools": tools}
    return response


def check_response(data: Any) -> None:
    _strict(Response, data)
    openapi.validate_response(_open_responses_view(data))


def check_event(data: Any) -> None:
    """One stream event, whichever of the two spellings it uses."""
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        raise AssertionError(f"an event without a string type: {data!r}")
    openai_kind = OPENAI_NAMES.get(kind, kind)
    model = _event_models().get(openai_kind)
    if model is None:
        raise AssertionError(f"openai-python has no event {openai_kind!r}")
    _strict(model, {**data, "type": openai_kind})
    view = {**data, "type": OPEN_RESPONSES_NAMES.get(kind, kind)}
    if "response" in view:
        view["response"] = _open_responses_view(view["response"])
    openapi.validate_event(view)


def check_error(data: Any) -> None:
    ErrorReply.model_validate(data)
    openapi.validate_schema("ErrorPayload", data["error"])


def check_items(data: Any) -> None:
    _strict(ResponseItemList, data)
    for item in data["data"]:
        openapi.validate_schema("ItemField", item)


def check_compaction(data: Any) -> None:
    _strict(CompactedResponse, data)
    openapi.validate_schema("CompactResource", data)


def check_ws_frame(data: Any) -> None:
    """A WebSocket frame: a stream event, or the `error` frame."""
    if isinstance(data, dict) and data.get("type") == "error" and "status" in data:
        openapi.validate_schema("WebSocketErrorEvent", data)
        _FrameErrorBody.model_validate(data["error"])
        return
    check_event(data)


_RESPONSE = re.compile(r"/v1/responses/[^/]+")
_ROUTES: list[tuple[str, re.Pattern[str], Callable[[Any], None]]] = [
    ("POST", re.compile(r"/v1/responses"), check_response),
    ("POST", re.compile(r"/v1/responses/compact"), check_compaction),
    ("GET", _RESPONSE, check_response),
    ("DELETE", _RESPONSE, DeletedReply.model_validate),
    ("POST", re.compile(r"/v1/responses/[^/]+/cancel"), check_response),
    ("GET", re.compile(r"/v1/responses/[^/]+/input_items"), check_items),
]


def check_reply(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """One whole HTTP answer of the gateway."""
    media = content_type.split(";")[0].strip()
    if status >= 400:
        assert media == "application/json", f"{status} answered with {content_type!r}: {body[:200]!r}"
        check_error(json.loads(body))
        return
    assert 200 <= status < 300, f"{method} {path} answered {status} (a redirect or other non-JSON answer)"
    if media == "text/event-stream":
        check_sse(body)
        return
    check = next((c for m, pattern, c in _ROUTES if m == method and pattern.fullmatch(path)), None)
    if check is not None:
        assert media == "application/json", f"{method} {path} answered {content_type!r}"
        check(json.loads(body))


def sse_events(body: bytes) -> Iterator[dict[str, Any]]:
    """The JSON events of a whole (or cut-off) SSE body, checking each `event:` name against its `type`."""
    reply = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    for sse in EventSource(reply).iter_sse():
        if sse.data == "[DONE]":
            continue
        data = json.loads(sse.data)
        assert sse.event == data.get("type"), f"event: {sse.event!r} but type {data.get('type')!r}"
        yield data


def check_sse(body: bytes) -> None:
    for data in sse_events(body):
        check_event(data)


class _Tee(httpx.SyncByteStream):
    """Passes the body through unchanged and checks it once the client has read it all (or closed it)."""

    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[bytes], None]) -> None:
        self.inner, self.done, self.chunks, self.checked = inner, done, list[bytes](), False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.chunks.append(chunk)
            yield chunk
        self._finish()

    def _finish(self) -> None:
        if not self.checked:
            self.checked = True
            self.done(b"".join(self.chunks))

    def close(self) -> None:
        self._finish()
        self.inner.close()


# gRPC method -> the check of each reply message (JSON as the edge encodes it); Session is covered by WebSocket.
_GRPC_CHECKS: dict[str, Callable[[Any], None]] = {
    "CreateResponse": check_response, "GetResponse": check_response, "CancelResponse": check_response,
    "ListInputItems": check_items, "CompactResponse": check_compaction, "DeleteResponse": DeletedReply.model_validate,
    "StreamResponse": check_event, "ResumeResponse": check_event,
    "StreamResponseBatched": lambda batch: [check_event(e) for e in batch["events"]],
}


class _CheckedStream:
    """A server-streaming call whose messages are checked as the client reads them; all else is the call's."""

    def __init__(self, call: Any, check: Callable[[Message], None]) -> None:
        self._call, self._check = call, check

    def __iter__(self) -> _CheckedStream:
        return self

    def __next__(self) -> Message:
        message: Message = next(self._call)
        self._check(message)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _GrpcChecker(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, recorder: Recorder, target: str) -> None:
        self.recorder, self.target = recorder, target

    def _checker(self, method: str) -> Callable[[Message], None] | None:
        name = method.rsplit("/", 1)[-1]
        check = _GRPC_CHECKS.get(name)
        if check is None:
            return None
        return lambda message: self.recorder._record(f"gRPC {name} on {self.target}",
                                                     lambda: check(codec.encode(message)))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        check = self._checker(details.method)
        if check is not None and outcome.exception() is None:
            check(outcome.result())
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(details, request)
        check = self._checker(details.method)
        return call if check is None else _CheckedStream(call, check)


class Recorder:
    """Checks what registered gateway addresses answer to httpx and websockets clients in this process."""

    def __init__(self) -> None:
        self.gateways: set[str] = set()
        self.violations: list[str] = []
        self.checked = 0
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []

    def add_gateway(self, url: str) -> None:
        """An HTTP URL, or a gRPC HOST:PORT, whose answers are checked."""
        self.gateways.add(httpx.URL(url).netloc.decode() if "://" in url else url)

    def _record(self, where: str, check: Callable[[], None]) -> None:
        try:
            check()
        except (AssertionError, ValidationError, SchemaError, ValueError) as exc:
            with self._lock:
                self.violations.append(f"{where}: {exc}"[:4000])
        with self._lock:
            self.checked += 1

    def take(self) -> list[str]:
        with self._lock:
            found, self.violations = self.violations, []
        return found

    def install(self) -> None:
        original = httpx.HTTPTransport.handle_request
        recorder = self

        def handle_request(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
            response = original(transport, request)
            if request.url.netloc.decode() not in recorder.gateways:
                return response
            method, path, status = request.method, request.url.path, response.status_code
            content_type = response.headers.get("content-type", "")
            if status == 101:
                return response

            def done(body: bytes) -> None:
                recorder._record(f"{method} {path} -> {status}",
                                 lambda: check_reply(method, path, status, content_type, body))

            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _Tee(response.stream, done)
            return response

        httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(httpx.HTTPTransport, "handle_request", original))
        self._install_websockets()
        self._install_grpc()

    def _install_grpc(self) -> None:
        original = grpc.insecure_channel
        recorder = self

        def insecure_channel(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
            channel = original(target, *args, **kwargs)
            if target not in recorder.gateways:
                return channel
            return grpc.intercept_channel(channel, _GrpcChecker(recorder, target))

        grpc.insecure_channel = insecure_channel
        self._undo.append(lambda: setattr(grpc, "insecure_channel", original))

    def _install_websockets(self) -> None:
        from websockets.sync.client import ClientConnection

        original = ClientConnection.recv
        recorder = self

        def recv(connection: ClientConnection, *args: Any, **kwargs: Any) -> Any:
            message = original(connection, *args, **kwargs)
            if connection.request is not None and connection.request.headers.get("host") in recorder.gateways:
                recorder._record(f"WebSocket frame {message[:120]!r}", lambda: check_ws_frame(json.loads(message)))
            return message

        ClientConnection.recv = recv  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(ClientConnection, "recv", original))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


RECORDER = Recorder()
