"""Wire conformance: every JSON body and stream event the gateway emits, checked the way strict clients parse it.

Three authorities, in order:
(a) openai-python's own pydantic models in strict mode (`Response`, `ResponseStreamEvent`, `ResponseItemList`,
    `CompactedResponse`), which is what a typed client does when it validates instead of `construct`s;
(b) the Open Responses OpenAPI (tests/openapi.py), with the event names the two spell differently mapped across;
(c) OpenRouter's own SDK, exercised separately in tests/e2e/test_wire.py.
Where (a) and (b) disagree, (a) wins and the difference is listed in docs/compatibility.md.

`Recorder` hooks into httpx and httpx2 (so the openrouter and openai SDKs, sync and async, and raw httpx calls
are all covered), into the websockets client and into gRPC channels (replies encoded by the edge's codec, as the
edge would send them): every reply from a registered gateway address is checked, and the violations are kept for
the test to fail on (tests/e2e/conftest.py does that for every end-to-end test).
"""

from __future__ import annotations

import json
import re
import threading
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from typing import Any

import grpc
import httpx
from google.protobuf.message import Message
from httpx_sse import EventSource
from jsonschema.exceptions import ValidationError as SchemaError
from openai.types.responses import CompactedResponse, Response, ResponseItemList, ResponseStreamEvent
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from switchboard.edge import codec
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


# OpenAI features Open Responses lacks, each listed in docs/compatibility.md: (a) alone judges them.
OPENAI_ONLY_TOOLS = {"namespace", "mcp"}
OPENAI_ONLY_ITEMS = {"mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response"}


def _openai_only(value: Any, kinds: set[str]) -> bool:
    return isinstance(value, dict) and value.get("type") in kinds


def _open_responses_view(response: Any) -> Any:
    """A response as (b) is asked to judge it: without the OpenAI features Open Responses lacks (namespace and MCP
    tools in the echoed `tools`, MCP items in `output`)."""
    if not isinstance(response, dict):
        return response
    view = dict(response)
    if isinstance(view.get("tools"), list):
        view["tools"] = [t for t in view["tools"] if not _openai_only(t, OPENAI_ONLY_TOOLS)]
    if isinstance(view.get("output"), list):
        view["output"] = [i for i in view["output"] if not _openai_only(i, OPENAI_ONLY_ITEMS)]
    return view


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
    if view["type"] not in openapi.event_types():
        return  # an event only OpenAI defines (such as the MCP events): (a) alone judges it
    if _openai_only(view.get("item"), OPENAI_ONLY_ITEMS):
        return  # an event about an item only OpenAI defines: (a) alone judges it
    if "response" in view:
        view["response"] = _open_responses_view(view["response"])
    openapi.validate_event(view)


def check_error(data: Any) -> None:
    ErrorReply.model_validate(data)
    openapi.validate_schema("ErrorPayload", data["error"])


def check_items(data: Any) -> None:
    _strict(ResponseItemList, data)
    for item in data["data"]:
        if not _openai_only(item, OPENAI_ONLY_ITEMS):
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


class _Body:
    """Collects a body as the client reads it and checks it once, when read to the end or closed."""

    def __init__(self, done: Callable[[bytes], None]) -> None:
        self.done, self.chunks, self.checked = done, list[bytes](), False

    def finish(self) -> None:
        if not self.checked:
            self.checked = True
            self.done(b"".join(self.chunks))


def _tees(module: Any) -> tuple[type, type]:
    """Pass-through body streams for one httpx flavour (httpx, or httpx2 which openai-python uses)."""

    class Tee(module.SyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, body: _Body) -> None:
            self.inner, self.body = inner, body

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                self.body.chunks.append(chunk)
                yield chunk
            self.body.finish()

        def close(self) -> None:
            self.body.finish()
            self.inner.close()

    class AsyncTee(module.AsyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, body: _Body) -> None:
            self.inner, self.body = inner, body

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                self.body.chunks.append(chunk)
                yield chunk
            self.body.finish()

        async def aclose(self) -> None:
            self.body.finish()
            await self.inner.aclose()

    return Tee, AsyncTee


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

    def _checker(self, request: Any, response: Any) -> _Body | None:
        """What checks this response's body once read, or None when it is not a gateway's API answer."""
        if request.url.netloc.decode() not in self.gateways or response.status_code == 101:
            return None
        method, path, status = request.method, request.url.path, response.status_code
        content_type = response.headers.get("content-type", "")

        def done(body: bytes) -> None:
            self._record(f"{method} {path} -> {status}", lambda: check_reply(method, path, status, content_type, body))

        return _Body(done)

    def install(self) -> None:
        for module in _httpx_flavours():
            self._install_httpx(module)
        self._install_websockets()
        self._install_grpc()

    def _install_httpx(self, module: Any) -> None:
        transport, async_transport = module.HTTPTransport, module.AsyncHTTPTransport
        original, original_async = transport.handle_request, async_transport.handle_async_request
        tee, async_tee = _tees(module)
        recorder = self

        def handle_request(self: Any, request: Any) -> Any:
            response = original(self, request)
            body = recorder._checker(request, response)
            if body is not None:
                response.stream = tee(response.stream, body)
            return response

        async def handle_async_request(self: Any, request: Any) -> Any:
            response = await original_async(self, request)
            body = recorder._checker(request, response)
            if body is not None:
                response.stream = async_tee(response.stream, body)
            return response

        transport.handle_request = handle_request
        async_transport.handle_async_request = handle_async_request
        self._undo.append(lambda: setattr(transport, "handle_request", original))
        self._undo.append(lambda: setattr(async_transport, "handle_async_request", original_async))

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


def _httpx_flavours() -> list[Any]:
    """httpx, and httpx2 (the fork openai-python 3.x sends with) when installed."""
    import importlib

    flavours: list[Any] = [httpx]
    try:
        flavours.append(importlib.import_module("httpx2"))
    except ImportError:
        pass
    return flavours


RECORDER = Recorder()
