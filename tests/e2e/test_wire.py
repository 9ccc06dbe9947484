"""Wire conformance with what OpenAI's and OpenRouter's own clients parse strictly, end to end.

Every answer in these tests (and in every other end-to-end test) also goes through tests/wire.py, which checks it
with openai-python's models in strict mode and the Open Responses schema; the tests here drive the shapes that
used to fail, across providers and transports, and OpenRouter's own SDK with its OpenRouter-only fields.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from openrouter import OpenRouter
from openrouter.errors import OpenRouterError
from pydantic import ValidationError
from websockets.sync.client import ClientConnection, connect

from switchboard.edge import codec
from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.responses.v1 import responses_service_pb2_grpc
from tests import wire
from tests.e2e.stack import API_KEY, Stack, start_stack
from tests.e2e.test_grpc import details
from tests.e2e.test_http import sse_events
from tests.streams import check_stream

pytestmark = pytest.mark.timeout(120)
AUTH = {"authorization": f"Bearer {API_KEY}"}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
SCHEMA = {"type": "json_schema", "name": "answer", "strict": True,
          "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
                     "additionalProperties": False}}


def nonce() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------- the checker itself


def test_every_gateway_answer_is_checked(http: httpx.Client, client: openai.OpenAI,
                                        wire_recorder: wire.Recorder) -> None:
    before = wire_recorder.checked
    http.post("/v1/responses", json={"model": "fake/echo", "input": "counted"})
    with http.stream("POST", "/v1/responses", json={"model": "fake/echo", "input": "counted", "stream": True}) as r:
        r.read()
    http.get("/v1/nothing-here")
    assert wire_recorder.checked - before == 3
    client.responses.create(model="fake/echo", input="counted")  # openai-python sends with httpx2
    list(client.responses.create(model="fake/echo", input="counted", stream=True))
    assert wire_recorder.checked - before == 5


async def test_async_clients_are_checked_too(base_url: str, wire_recorder: wire.Recorder) -> None:
    before = wire_recorder.checked
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        response = await sdk.responses.create(model="fake/echo", input="async")
        events = [event async for event in await sdk.responses.create(model="fake/echo", input="async", stream=True)]
    assert response.output_text == "echo: async" and events[-1].type == "response.completed"
    assert wire_recorder.checked - before == 2


def test_every_grpc_reply_is_checked(stack: Stack, wire_recorder: wire.Recorder) -> None:
    request = pb.CreateResponseRequest(model="fake/reasoning", input=pb.Input(text="over grpc"))
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    before = wire_recorder.checked
    with grpc.insecure_channel(stack.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        created = stub.CreateResponse(request, metadata=metadata, timeout=60)
        events = list(stub.StreamResponse(request, metadata=metadata, timeout=60))
        stub.ListInputItems(pb.ListInputItemsRequest(response_id=created.id), metadata=metadata, timeout=60)
    assert events[-1].WhichOneof("event") == "response_completed"
    assert wire_recorder.checked - before == 1 + len(events) + 1


def test_the_checker_rejects_what_strict_clients_reject(http: httpx.Client) -> None:
    body = http.post("/v1/responses", json={"model": "fake/echo", "input": "shape"}).json()
    wire.check_response(body)
    broken = json.loads(json.dumps(body))
    del broken["usage"]["input_tokens_details"]["cache_write_tokens"]
    with pytest.raises(ValidationError):
        wire.check_response(broken)
    broken = {**body, "error": {"code": "cancelled", "message": "x"}}
    with pytest.raises(ValidationError):
        wire.check_response(broken)
    with pytest.raises(ValidationError):
        wire.check_event({"type": "error", "sequence_number": 3, "error": {"type": "server_error", "code": None,
                                                                          "message": "m", "param": None}})
    with pytest.raises(AssertionError):
        wire.check_event({"type": "response.reasoning_summary.delta", "sequence_number": 1})


# ---------------------------------------------------------------- shapes across providers and transports

SHAPES: dict[str, dict[str, Any]] = {
    "plain text": {"input": "plain"},
    "function tools": {"model": "tool-call", "input": "call it", "tools": [WEATHER]},
    "reasoning": {"model": "reasoning", "input": "why", "reasoning": {"summary": "auto"},
                  "include": ["reasoning.encrypted_content"]},
    "json_schema": {"input": "structured", "text": {"format": SCHEMA}},
    "incomplete": {"input": " ".join(["word"] * 40), "max_output_tokens": 16},
    "chat-style input": {"input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "hello"},
                                   {"role": "user", "content": [{"type": "input_text", "text": "again"}]}]},
}


@pytest.mark.parametrize("provider", ["fake", "anthropic", "responses"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes_parse_strictly_unary_and_streamed(client: openai.OpenAI, http: httpx.Client, provider: str,
                                                  shape: str) -> None:
    body = {**SHAPES[shape]}
    body["model"] = f"{provider}/{body.get('model', 'echo')}"
    unary = client.responses.create(**body)  # the recorder checks the JSON strictly; the SDK parses it
    assert unary.status in ("completed", "incomplete")
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        events, names = sse_events(reply)
    final = check_stream(events)
    assert names == [e["type"] for e in events]
    assert final["status"] == unary.status
    assert {i["type"] for i in final["output"]} == {i.type for i in unary.output}
    stored = client.responses.retrieve(unary.id)
    assert stored.usage is not None and stored.usage.output_tokens_details.reasoning_tokens >= 0
    items = client.responses.input_items.list(unary.id)
    assert all(getattr(i, "status", "completed") == "completed" for i in items.data)


# ---------------------------------------------------------------- usage


@pytest.mark.parametrize(("model", "cached", "written"), [("anthropic/cached", 3, 2), ("fake/echo", 0, 0),
                                                          ("responses/echo", 0, 0)])
def test_usage_reports_cache_writes(client: openai.OpenAI, model: str, cached: int, written: int) -> None:
    response = client.responses.create(model=model, input="cache me")
    assert response.usage is not None
    details = response.usage.input_tokens_details
    assert (details.cached_tokens, details.cache_write_tokens) == (cached, written)
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    streamed = list(client.responses.create(model=model, input="cache me", stream=True))
    final = streamed[-1].response  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens_details.cache_write_tokens == written


# ---------------------------------------------------------------- reasoning event names


def _reasoning_names(http: httpx.Client, headers: dict[str, str] | None = None) -> list[str]:
    with http.stream("POST", "/v1/responses", headers=headers or {},
                     json={"model": "fake/reasoning", "input": "why", "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        events, names = sse_events(reply)
    check_stream(events)
    assert names == [e["type"] for e in events]
    return [n for n in names if n.startswith("response.reasoning") and "summary" not in n]


def test_reasoning_events_use_the_openai_names_by_default(client: openai.OpenAI, http: httpx.Client) -> None:
    assert _reasoning_names(http) == ["response.reasoning_text.delta"] * 2 + ["response.reasoning_text.done"]
    typed = [e for e in client.responses.create(model="fake/reasoning", input="why", stream=True)
             if e.type == "response.reasoning_text.delta"]
    assert "".join(e.delta for e in typed) == "thinking hard"  # the SDK's own typed events, not unknown ones


def test_open_responses_names_on_request(http: httpx.Client) -> None:
    names = _reasoning_names(http, {"x-switchboard-event-names": "open_responses"})
    assert names == ["response.reasoning.delta"] * 2 + ["response.reasoning.done"]
    assert _reasoning_names(http, {"x-switchboard-event-names": "openai"})[-1] == "response.reasoning_text.done"
    bad = http.post("/v1/responses", headers={"x-switchboard-event-names": "klingon"},
                    json={"model": "fake/reasoning", "input": "why", "stream": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-switchboard-event-names"


@pytest.fixture(scope="module")
def open_responses_stack(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    """A gateway configured for the Open Responses spelling (no local model, so it starts in a second)."""
    started = start_stack(Path(tmp_path_factory.mktemp("open-responses-names")), upstream, local_model=False,
                          server={"event_names": "open_responses"})
    yield started
    started.stop()


def test_open_responses_names_by_configuration(open_responses_stack: Stack) -> None:
    assert open_responses_stack.envoy is not None
    for url in (open_responses_stack.http, open_responses_stack.envoy):
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            assert _reasoning_names(http)[-1] == "response.reasoning.done"
            assert _reasoning_names(http, {"x-switchboard-event-names": "openai"})[-1] == \
                "response.reasoning_text.done"
        with _ws(url) as ws:
            frames = _turn(ws, model="fake/reasoning", input="why")
            assert "response.reasoning.delta" in [f["type"] for f in frames]


def test_websocket_event_names_follow_the_header(base_url: str) -> None:
    with _ws(base_url, {"x-switchboard-event-names": "open-responses"}) as ws:
        kinds = [f["type"] for f in _turn(ws, model="fake/reasoning", input="why")]
    assert "response.reasoning.delta" in kinds and "response.reasoning_text.delta" not in kinds
    with _ws(base_url) as ws:
        kinds = [f["type"] for f in _turn(ws, model="fake/reasoning", input="why")]
    assert "response.reasoning_text.delta" in kinds


# ---------------------------------------------------------------- WebSocket helpers


@contextlib.contextmanager
def _ws(base_url: str, headers: dict[str, str] | None = None) -> Iterator[ClientConnection]:
    url = base_url.replace("http://", "ws://", 1) + "/v1/responses"
    with connect(url, additional_headers={**AUTH, **(headers or {})}, open_timeout=10, close_timeout=5) as ws:
        yield ws


def _turn(ws: ClientConnection, **body: Any) -> list[dict[str, Any]]:
    """Sends one response.create; the frames up to a terminal event or an error frame."""
    ws.send(json.dumps({"type": "response.create", **body}))
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(ws.recv(timeout=30))
        frames.append(frame)
        if frame["type"] in ("response.completed", "response.failed", "response.incomplete") or (
                frame["type"] == "error" and "status" in frame):
            return frames


# ---------------------------------------------------------------- stored input items


def _shorthand_input(marker: str) -> list[dict[str, Any]]:
    return [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": marker},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]},
        {"role": "assistant", "content": "earlier answer"},
        {"type": "function_call", "call_id": "call_x", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_x", "output": "sunny"},
    ]


def _assert_normalised(items: list[dict[str, Any]], marker: str) -> None:
    assert [i["type"] for i in items] == ["message"] * 4 + ["function_call", "function_call_output"]
    for item in items:
        assert item["id"] and item["status"] == "completed", item
    developer, user, image, assistant = items[:4]
    assert developer["content"] == [{"type": "input_text", "text": "be brief"}]
    assert user["content"] == [{"type": "input_text", "text": marker}]
    assert image["content"][1]["type"] == "input_image" and image["content"][1]["detail"] == "auto"
    assert assistant["content"][0]["type"] == "output_text" and assistant["content"][0]["text"] == "earlier answer"
    assert items[5]["output"] == "sunny"


def test_input_items_are_normalised_over_http(client: openai.OpenAI, http: httpx.Client) -> None:
    marker = nonce()
    created = client.responses.create(model="fake/echo", input=_shorthand_input(marker), tools=[WEATHER])
    listed = http.get(f"/v1/responses/{created.id}/input_items", params={"order": "asc"}).json()
    _assert_normalised(listed["data"], marker)
    typed = client.responses.input_items.list(created.id, order="asc")  # the SDK's own parse
    assert [i.type for i in typed.data] == [i["type"] for i in listed["data"]]
    text_only = client.responses.create(model="fake/echo", input="just text")
    (only,) = http.get(f"/v1/responses/{text_only.id}/input_items").json()["data"]
    assert only["content"] == [{"type": "input_text", "text": "just text"}] and only["status"] == "completed"


def test_item_references_are_listed_as_the_items_they_name(client: openai.OpenAI, http: httpx.Client) -> None:
    first = client.responses.create(model="fake/echo", input="refer to me")
    answer = first.output[0]
    follow = client.responses.create(model="fake/echo", previous_response_id=first.id, input=[
        {"type": "item_reference", "id": answer.id}, {"role": "user", "content": "and again"}])
    listed = http.get(f"/v1/responses/{follow.id}/input_items", params={"order": "asc"}).json()["data"]
    assert [(i["type"], i["id"]) for i in listed][0] == ("message", answer.id)
    assert listed[0]["role"] == "assistant" and listed[0]["content"][0]["text"] == "echo: refer to me"
    assert listed[1]["content"] == [{"type": "input_text", "text": "and again"}]


def test_input_items_are_normalised_over_grpc(stack: Stack) -> None:
    marker = nonce()
    request = codec.decode({"model": "fake/echo", "input": _shorthand_input(marker), "tools": [WEATHER]},
                           pb.CreateResponseRequest)
    with grpc.insecure_channel(stack.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        metadata = (("authorization", f"Bearer {API_KEY}"),)
        created = stub.CreateResponse(request, metadata=metadata, timeout=60)
        listed = stub.ListInputItems(pb.ListInputItemsRequest(response_id=created.id, order=pb.LIST_ORDER_ASC),
                                     metadata=metadata, timeout=60)
    data = codec.encode(listed)
    wire.check_items(data)
    _assert_normalised(data["data"], marker)


def test_input_items_are_normalised_over_websocket(base_url: str, http: httpx.Client) -> None:
    marker = nonce()
    with _ws(base_url) as ws:
        frames = _turn(ws, model="fake/echo", input=_shorthand_input(marker), tools=[WEATHER])
    response_id = frames[-1]["response"]["id"]
    listed = http.get(f"/v1/responses/{response_id}/input_items", params={"order": "asc"}).json()
    _assert_normalised(listed["data"], marker)


# ---------------------------------------------------------------- tool outputs must answer a call


def test_an_unanswered_tool_output_is_400_over_http(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="fake/echo", input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call_output", "call_id": "call_nobody", "output": "x"}])
    error = info.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == "input[1]"
    assert error["message"] == "No tool call found for function call output with call_id call_nobody."


def test_a_tool_output_may_answer_a_call_of_the_chain(client: openai.OpenAI) -> None:
    first = client.responses.create(model="fake/tool-call", input="call", tools=[WEATHER])  # type: ignore[list-item]
    call = first.output[0]
    assert call.type == "function_call"
    follow = client.responses.create(model="fake/tool-call", previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "ok"}])
    assert follow.output_text == "tool said: ok"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="fake/tool-call", previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
                                input=[{"type": "function_call_output", "call_id": "call_other", "output": "x"}])
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "input[0]"


def test_an_unanswered_tool_output_is_invalid_argument_over_grpc(stack: Stack) -> None:
    request = codec.decode({"model": "fake/echo", "input": [
        {"type": "function_call_output", "call_id": "call_nobody", "output": "x"}]}, pb.CreateResponseRequest)
    with grpc.insecure_channel(stack.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateResponse(request, metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "No tool call found for function call output with call_id call_nobody" in info.value.details()  # type: ignore[attr-defined]
    _, bad = details(info.value)
    assert bad is not None and bad.field_violations[0].field == "input[0]"


def test_websocket_unanswered_tool_output_evicts_the_continued_id(base_url: str) -> None:
    with _ws(base_url) as ws:
        first = _turn(ws, model="fake/echo", input="remember me", store=False)[-1]["response"]
        assert first["status"] == "completed"
        refused = _turn(ws, model="fake/echo", store=False, previous_response_id=first["id"],
                        input=[{"type": "function_call_output", "call_id": "call_nobody", "output": "x"}])[-1]
        assert refused["type"] == "error" and refused["status"] == 400
        assert refused["error"]["param"] == "input[0]" and "call_nobody" in refused["error"]["message"]
        again = _turn(ws, model="fake/echo", store=False, previous_response_id=first["id"], input="next")[-1]
        assert again["type"] == "error" and again["error"]["code"] == "previous_response_not_found"


# ---------------------------------------------------------------- every route answers JSON


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/responses/", 404),
    ("POST", "/v1/responses/", 404),
    ("GET", "/v1/responses/resp_x/input_items/", 404),
    ("GET", "/", 404),
    ("GET", "/nothing/here", 404),
    ("GET", "/v1", 404),
    ("PUT", "/v1/responses", 405),
    ("GET", "/v1/responses", 405),
    ("DELETE", "/v1/responses/resp_x/cancel", 405),
    ("PATCH", "/v1/responses/resp_x", 405),
])
def test_every_route_answers_json(base_url: str, method: str, path: str, status: int) -> None:
    with httpx.Client(headers=AUTH, timeout=30, follow_redirects=False) as session:
        reply = session.request(method, base_url + path)
    assert reply.status_code == status, (reply.status_code, reply.headers, reply.text)
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == ("not_found" if status == 404 else "method_not_allowed")


# ---------------------------------------------------------------- OpenRouter's own SDK


@pytest.fixture
def openrouter(base_url: str) -> Iterator[OpenRouter]:
    with OpenRouter(api_key=API_KEY, server_url=f"{base_url}/v1") as sdk:
        yield sdk


def test_openrouter_sdk_with_its_own_fields(openrouter: OpenRouter, stack: Stack) -> None:
    marker = nonce()
    result = openrouter.beta.responses.send(
        model="fake/fail-500", models=["fake/echo"], input=f"from openrouter {marker}",
        provider={"sort": "price", "allow_fallbacks": True, "data_collection": "allow"},
        plugins=[{"id": "context-compression"}], session_id=f"session-{marker}", stream=False)
    assert result.model == "fake/echo" and result.status == "completed"
    assert result.output_text == f"echo: from openrouter {marker}"  # type: ignore[attr-defined]
    assert result.usage is not None and result.usage.input_tokens_details.cached_tokens == 0


def test_openrouter_sdk_streams_typed_events(openrouter: OpenRouter) -> None:
    stream = openrouter.beta.responses.send(model="fake/reasoning", input="why", stream=True,
                                            reasoning={"summary": "auto"}, provider={"sort": "latency"},
                                            session_id="openrouter-stream")
    with stream as events:
        kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds


def test_openrouter_sdk_sees_permanent_routing_failures_as_404(openrouter: OpenRouter) -> None:
    # The SDK drops quantizations outside its enum (int3), so int4: no endpoint here declares it.
    with pytest.raises(OpenRouterError) as info:
        openrouter.beta.responses.send(model="fake/echo", input="x", provider={"quantizations": ["int4"]})
    # OpenRouter's error `code` is the HTTP status as a number, OpenAI's a string; the body is OpenAI's
    # (docs/compatibility.md), so the SDK reports it as a validation error carrying the raw 404.
    assert info.value.raw_response.status_code == 404
    error = json.loads(info.value.body)["error"]
    assert error["code"] == "no_endpoints_found" and error["param"] == "provider.quantizations"
