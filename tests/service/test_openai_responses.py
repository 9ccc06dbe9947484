"""OpenAIResponsesProvider against the fake native Responses upstream (a real subprocess), plus pure
translation tables; the fake's own output is checked against the Open Responses spec."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import orjson
import pytest

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    ReasoningSummaryDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
    UsageDelta,
)
from switchboard.service.providers.openai_responses import OpenAIResponsesProvider
from switchboard.service.providers.openai_responses_translate import (
    EventStream,
    build_body,
    build_input,
    parse_response,
)
from switchboard.shared.errors import UpstreamError
from tests.openapi import validate_event, validate_response, validate_schema
from tests.service.builders import (
    ASSISTANT,
    DEVELOPER,
    SYSTEM,
    USER,
    P,
    call,
    calls_of,
    effort,
    file_part,
    image_part,
    msg,
    out_part,
    output,
    reasoning,
    start_fake,
    struct,
    text_of,
    text_part,
    user_turn,
    wait_cancelled,
    weather_tool,
)
from tests.service.builders import choice as _choice

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    yield from start_fake("tests.fakes.openai_responses")


@pytest.fixture()
def control(upstream: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream, timeout=5) as client:
        client.delete("/_requests")
        client.delete("/_stats")
        yield client


@pytest.fixture()
async def provider(upstream: str) -> AsyncIterator[OpenAIResponsesProvider]:
    p = OpenAIResponsesProvider("native", base_url=upstream + "/v1", api_key="sk-test")
    yield p
    await p.aclose()


async def collect(p: OpenAIResponsesProvider, turn: Turn) -> list[Delta]:
    return [d async for d in p.stream(turn)]


def last_request(control: httpx.Client) -> dict[str, Any]:
    request: dict[str, Any] = control.get("/_requests").json()[-1]
    return request


REASON = response_pb2.ReasoningConfig(effort=response_pb2.REASONING_EFFORT_LOW,
                                      summary=response_pb2.REASONING_SUMMARY_AUTO)


# ---------------------------------------------------------------- against the fake upstream


async def test_echo_streaming(provider: OpenAIResponsesProvider, control: httpx.Client) -> None:
    deltas = await collect(provider, user_turn("echo"))
    assert text_of(deltas) == "echo: hello world"
    assert all(isinstance(d, TextDelta) for d in deltas[:-2])
    assert deltas[-2:] == [UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]
    request = last_request(control)
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["body"] == {"model": "echo", "stream": True, "store": False,
                               "input": [{"type": "message", "role": "user", "content": "hello world"}]}
    validate_schema("CreateResponseBody", request["body"])


async def test_echo_non_streaming(provider: OpenAIResponsesProvider) -> None:
    deltas = await collect(provider, user_turn("echo", stream=False))
    assert deltas == [TextDelta("echo: hello world"), UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_call(provider: OpenAIResponsesProvider, control: httpx.Client, stream: bool) -> None:
    choice = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)
    deltas = await collect(provider, user_turn("tool-call", tools=[weather_tool()], tool_choice=choice,
                                               parallel_tool_calls=False, stream=stream))
    calls = calls_of(deltas)
    assert calls[0].index == 0 and calls[0].name == "get_weather"
    assert calls[0].call_id is not None and calls[0].call_id.startswith("call_")
    assert all(c.index == 0 for c in calls)
    assert "".join(c.arguments for c in calls) == '{"x": 1}'
    assert isinstance(deltas[-2], UsageDelta) and deltas[-1] == Finish("tool_calls")
    body = last_request(control)["body"]
    assert body["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather by city",
                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                             "required": ["city"], "maxProperties": 1}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    validate_schema("CreateResponseBody", body)


async def test_tool_result_turn_request_body(provider: OpenAIResponsesProvider, control: httpx.Client) -> None:
    items = [
        msg(SYSTEM, "You are terse."),
        msg(USER, "weather in Paris?"),
        reasoning(summary="need the tool", encrypted="gAAAA-upstream"),
        call("call_1", "get_weather", '{"city":"Paris"}'),
        output("call_1", "sunny"),
    ]
    deltas = await collect(provider, Turn(model="tool-call", items=items, tools=[weather_tool()]))
    assert text_of(deltas) == "tool said: sunny" and deltas[-1] == Finish("stop")
    body = last_request(control)["body"]
    assert body["input"] == [
        {"type": "message", "role": "system", "content": "You are terse."},
        {"type": "message", "role": "user", "content": "weather in Paris?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "need the tool"}],
         "encrypted_content": "gAAAA-upstream"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    # Replayed reasoning needs its encrypted_content back from the upstream on this turn too.
    assert body["include"] == ["reasoning.encrypted_content"]
    validate_schema("CreateResponseBody", body)


@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning(provider: OpenAIResponsesProvider, control: httpx.Client, stream: bool) -> None:
    deltas = await collect(provider, user_turn("reasoning", reasoning=REASON, stream=stream))
    assert "".join(d.text for d in deltas if isinstance(d, ReasoningDelta)) == "thinking hard"
    assert "".join(d.text for d in deltas if isinstance(d, ReasoningSummaryDelta)) == "Thinking hard.\n\nDone."
    first_text = next(i for i, d in enumerate(deltas) if isinstance(d, TextDelta))
    assert all(not isinstance(d, TextDelta) for d in deltas[:first_text])
    assert text_of(deltas) == "echo: hello world"
    assert deltas[-2:] == [UsageDelta(input_tokens=2, output_tokens=8, reasoning_tokens=5), Finish("stop")]
    body = last_request(control)["body"]
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert body["include"] == ["reasoning.encrypted_content"]


@pytest.mark.parametrize("stream", [True, False])
async def test_max_output_tokens_is_length(provider: OpenAIResponsesProvider, control: httpx.Client,
                                           stream: bool) -> None:
    words = " ".join(str(n) for n in range(20))
    deltas = await collect(provider, user_turn("echo", words, max_output_tokens=16, stream=stream))
    assert text_of(deltas) == "echo: " + " ".join(str(n) for n in range(15)) + " " and deltas[-1] == Finish("length")
    assert last_request(control)["body"]["max_output_tokens"] == 16
    deltas = await collect(provider, user_turn("max-tokens", stream=stream))
    assert deltas[-1] == Finish("length")


@pytest.mark.parametrize("stream", [True, False])
async def test_refusal(provider: OpenAIResponsesProvider, stream: bool) -> None:
    deltas = await collect(provider, user_turn("refusal", stream=stream))
    refusal = "".join(d.text for d in deltas if isinstance(d, RefusalDelta))
    assert refusal == "I'm sorry, I can't help with that." and not text_of(deltas)
    assert deltas[-1] == Finish("stop")


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("model", "status", "grpc_status"), [
    ("fail-500", 500, grpc.StatusCode.UNAVAILABLE),
    ("fail-429", 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ("overloaded", 503, grpc.StatusCode.UNAVAILABLE),
])
async def test_retryable_statuses(provider: OpenAIResponsesProvider, model: str, status: int,
                                  grpc_status: grpc.StatusCode, stream: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn(model, stream=stream))
    err = info.value
    assert err.retryable and err.upstream_status == status and err.status == grpc_status
    assert err.retry_after == (1.0 if status == 429 else None)


async def test_context_too_long(provider: OpenAIResponsesProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("context-too-long"))
    assert info.value.code == "context_length_exceeded" and info.value.status == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("stream", [True, False])
async def test_failed_response(provider: OpenAIResponsesProvider, stream: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("failed", stream=stream))
    assert "fake failed" in info.value.message and info.value.retryable


async def test_error_event(provider: OpenAIResponsesProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("error-event"))
    assert info.value.message == "upstream error: Something broke mid-stream." and info.value.retryable


async def test_drop_mid_stream(provider: OpenAIResponsesProvider) -> None:
    got: list[Delta] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in provider.stream(user_turn("drop-mid-stream", "a b c d e f g h")):
            got.append(delta)
    assert info.value.code == "upstream_stream_interrupted" and not info.value.retryable
    assert got and all(isinstance(d, TextDelta) for d in got)


async def test_cancellation_closes_upstream_request(provider: OpenAIResponsesProvider,
                                                    control: httpx.Client) -> None:
    gen = provider.stream(user_turn("slow-300", "a b c d e f g h"))
    assert isinstance(await anext(gen), TextDelta)
    await gen.aclose()
    await wait_cancelled(control)


async def test_connection_is_reused(provider: OpenAIResponsesProvider) -> None:
    before = provider.connections_opened
    for stream in (True, True, False, True):
        await collect(provider, user_turn("echo", stream=stream))
    # Four requests, streamed and not, over at most one new keep-alive connection.
    assert provider.connections_opened - before <= 1


@pytest.mark.parametrize("model", ["echo", "reasoning", "tool-call", "refusal", "max-tokens", "failed"])
def test_fake_follows_the_spec(control: httpx.Client, model: str) -> None:
    body = {"model": model, "stream": True, "input": "hi there", "reasoning": {"summary": "auto"},
            "include": ["reasoning.encrypted_content"], "tools": [{"type": "function", "name": "f"}]}
    with control.stream("POST", "/v1/responses", json=body, headers={"authorization": "Bearer k"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    events = []
    for frame in frames[:-2]:
        name, data = frame.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        validate_event(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sum(e["type"] in ("response.completed", "response.incomplete", "response.failed") for e in events) == 1
    validate_response(events[-1]["response"])


# ---------------------------------------------------------------- pure translation

INPUT_CASES: list[tuple[str, list[items_pb2.Item], list[dict[str, Any]]]] = [
    ("roles and parts", [
        msg(DEVELOPER, parts=[text_part("d")]),
        msg(ASSISTANT, parts=[out_part("a"), text_part("b"), P(refusal=content_pb2.RefusalContent(refusal="no"))],
            phase=items_pb2.MESSAGE_PHASE_COMMENTARY),
        msg(ASSISTANT, "plain")],
     [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "d"}]},
      {"type": "message", "role": "assistant", "phase": "commentary", "content": [
          {"type": "output_text", "text": "a", "annotations": []},
          {"type": "output_text", "text": "b", "annotations": []}, {"type": "refusal", "refusal": "no"}]},
      {"type": "message", "role": "assistant", "content": "plain"}]),
    ("media", [msg(USER, parts=[
        image_part("https://x/i.png", detail=content_pb2.IMAGE_DETAIL_HIGH), image_part(file_id="file-1"),
        file_part(filename="a.pdf", file_data="data:application/pdf;base64,AA"), file_part(file_url="https://x/a"),
        P(input_audio=content_pb2.InputAudioContent(data="UklG", format="wav")),
        P(input_video=content_pb2.InputVideoContent(video_url="https://x/v.mp4"))])],
     [{"type": "message", "role": "user", "content": [
         {"type": "input_image", "detail": "high", "image_url": "https://x/i.png"},
         {"type": "input_image", "detail": "auto", "file_id": "file-1"},
         {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"},
         {"type": "input_file", "file_url": "https://x/a"},
         {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
         {"type": "input_video", "video_url": "https://x/v.mp4"}]}]),
    ("tool output parts", [output("c1", parts=[text_part("see"), image_part("https://x/1.png")])],
     [{"type": "function_call_output", "call_id": "c1", "output": [
         {"type": "input_text", "text": "see"}, {"type": "input_image", "detail": "auto",
                                                 "image_url": "https://x/1.png"}]}]),
    ("raw reasoning goes back", [reasoning(raw="r")],
     [{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]}]),
    ("compaction, reference, verbatim other", [
        items_pb2.Item(compaction=items_pb2.CompactionItem(encrypted_content="x")),
        items_pb2.Item(item_reference=items_pb2.ItemReference(id="msg_1")),
        items_pb2.Item(other=struct({"type": "custom_thing", "n": 2}))],
     [{"type": "compaction", "encrypted_content": "x"}, {"type": "item_reference", "id": "msg_1"},
      {"type": "custom_thing", "n": 2}]),
]


@pytest.mark.parametrize(("items", "expected"), [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES])
def test_build_input(items: list[items_pb2.Item], expected: list[dict[str, Any]]) -> None:
    assert build_input(items) == expected


def _text(**kw: Any) -> response_pb2.TextConfig:
    return response_pb2.TextConfig(**kw)


ENCRYPTED = {"include": ["reasoning.encrypted_content"]}
BODY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sampling", dict(max_output_tokens=50, temperature=0.5, top_p=0.9, presence_penalty=0.1, frequency_penalty=0.2,
                      top_k=40, top_logprobs=3, user="u1"),
     {"max_output_tokens": 50, "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2,
      "top_logprobs": 3, "safety_identifier": "u1", "include": ["message.output_text.logprobs"]}),
    ("function choice", dict(tools=[weather_tool()], tool_choice=_choice(
        function=tools_pb2.FunctionToolChoice(name="get_weather")), parallel_tool_calls=True),
     {"tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": True}),
    ("none", dict(tools=[weather_tool()], tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_NONE)),
     {"tool_choice": "none"}),
    ("no tools, no tool settings", dict(tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_AUTO),
                                        parallel_tool_calls=False), {}),
    ("json schema + verbosity", dict(text=_text(verbosity=response_pb2.VERBOSITY_LOW, format=response_pb2.TextFormat(
        json_schema=response_pb2.JsonSchemaFormat(name="out", description="d", strict=True,
                                                  schema=struct({"type": "object"}))))),
     {"text": {"verbosity": "low", "format": {"type": "json_schema", "name": "out", "description": "d",
                                              "strict": True, "schema": {"type": "object"}}}}),
    ("json object", dict(text=_text(format=response_pb2.TextFormat(json_object=response_pb2.JsonObjectFormat()))),
     {"text": {"format": {"type": "json_object"}}}),
    ("plain text", dict(text=_text(format=response_pb2.TextFormat(text=response_pb2.TextFormatText()))),
     {"text": {"format": {"type": "text"}}}),
    ("reasoning", dict(reasoning=REASON), {"reasoning": {"effort": "low", "summary": "auto"}, **ENCRYPTED}),
    ("reasoning off", dict(reasoning=effort(response_pb2.REASONING_EFFORT_NONE)), {"reasoning": {"effort": "none"}}),
    ("budget only", dict(reasoning=response_pb2.ReasoningConfig(max_tokens=100)), ENCRYPTED),
]


@pytest.mark.parametrize(("kw", "extra"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_build_body(kw: dict[str, Any], extra: dict[str, Any]) -> None:
    body = build_body(Turn(model="m", items=[msg(USER, "hi")], stream=False, **kw))
    body.pop("tools", None)
    assert body == {"model": "m", "stream": False, "store": False,
                    "input": [{"type": "message", "role": "user", "content": "hi"}], **extra}
    if body.get("text", {}).get("format") != {"type": "json_object"}:  # OpenAI has it, the spec does not
        validate_schema("CreateResponseBody", body)


def _fold(events: list[dict[str, Any]]) -> list[Delta]:
    state = EventStream()
    deltas = [d for e in events for d in state.feed(e)]
    state.end()
    return deltas


USAGE = {"input_tokens": 9, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 1},
         "output_tokens_details": {"reasoning_tokens": 2}}
USAGE_DELTA = UsageDelta(input_tokens=9, output_tokens=4, cached_tokens=6, reasoning_tokens=2, cache_write_tokens=1)
FC = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}


def _done(status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {"type": f"response.{status}", "response": {"status": status, "usage": USAGE, **extra}}


FOLD_CASES: list[tuple[str, list[dict[str, Any]], list[Delta]]] = [
    ("openai names, message after calls", [
        {"type": "response.created"},
        {"type": "response.reasoning_text.delta", "output_index": 0, "delta": "r"},
        {"type": "response.output_item.added", "output_index": 1, "item": FC},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"},
        {"type": "response.output_item.added", "output_index": 2, "item": FC | {"call_id": "c2"}},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{"},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": " "},
        {"type": "acme:custom_event"}, _done()],
     [ReasoningDelta("r"), ToolCallDelta(0, "c1", "f"), ToolCallDelta(0, arguments="{}"), ToolCallDelta(1, "c2", "f"),
      ToolCallDelta(1, arguments="{"), ToolCallDelta(0, arguments=" "), USAGE_DELTA, Finish("tool_calls")]),
    ("whole items without deltas", [
        {"type": "response.output_item.added", "output_index": 0, "item": FC},
        {"type": "response.output_item.done", "output_index": 0, "item": FC | {"arguments": '{"a":1}'}},
        {"type": "response.output_item.done", "output_index": 1, "item": {"type": "message", "content": [
            {"type": "output_text", "text": "hi"}, {"type": "refusal", "refusal": "no"}]}},
        {"type": "response.output_item.done", "output_index": 2, "item": {"type": "reasoning", "summary": [
            {"type": "summary_text", "text": "a"}, {"type": "summary_text", "text": "b"}]}}, _done()],
     [ToolCallDelta(0, "c1", "f"), ToolCallDelta(0, "c1", "f", '{"a":1}'), TextDelta("hi"), RefusalDelta("no"),
      ReasoningSummaryDelta("a\n\nb"), USAGE_DELTA, Finish("tool_calls")]),
    ("summary parts are paragraphs; streamed items are not repeated", [
        {"type": "response.reasoning_summary_part.added", "output_index": 0, "summary_index": 0},
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "a"},
        {"type": "response.reasoning_summary_part.added", "output_index": 0, "summary_index": 1},
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "b"},
        {"type": "response.output_item.done", "output_index": 0, "item": {"type": "reasoning", "summary": [
            {"type": "summary_text", "text": "a"}, {"type": "summary_text", "text": "b"}]}}, _done()],
     [ReasoningSummaryDelta("a"), ReasoningSummaryDelta("\n\n"), ReasoningSummaryDelta("b"), USAGE_DELTA,
      Finish("stop")]),
    ("content filter", [_done("incomplete", incomplete_details={"reason": "content_filter"})],
     [USAGE_DELTA, Finish("content_filter")]),
    ("unknown incomplete reason", [_done("incomplete", incomplete_details={"reason": "something_new"})],
     [USAGE_DELTA, Finish("length")]),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES])
def test_stream_fold(events: list[dict[str, Any]], expected: list[Delta]) -> None:
    assert _fold(events) == expected


@pytest.mark.parametrize(("events", "code", "retryable", "message"), [
    ([{"type": "response.output_text.delta", "output_index": 0, "delta": "a"}], "upstream_stream_interrupted", False,
     "ended before"),
    ([{"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}], "upstream_error",
     True, "slow down"),
    ([{"type": "error", "error": {"type": "invalid_request_error", "code": None, "message": "bad"}}],
     "upstream_error", False, "bad"),
    ([{"type": "response.failed", "response": {"status": "failed", "error": {
        "code": "context_length_exceeded", "message": "too long"}}}], "context_length_exceeded", True, "too long"),
])
def test_stream_fold_errors(events: list[dict[str, Any]], code: str, retryable: bool, message: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _fold(events)
    assert (info.value.code, info.value.retryable) == (code, retryable) and message in info.value.message


def test_parse_response() -> None:
    data = {"status": "completed", "usage": USAGE, "output": [
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}], "summary": []},
        {"type": "web_search_call"}, FC | {"arguments": "{}"}, FC | {"call_id": "c2"}]}
    assert parse_response(data) == [ReasoningDelta("r"), ToolCallDelta(0, "c1", "f", "{}"),
                                    ToolCallDelta(1, "c2", "f", ""), USAGE_DELTA, Finish("tool_calls")]
    with pytest.raises(UpstreamError) as info:
        parse_response({"status": "in_progress", "output": []})
    assert info.value.code == "upstream_protocol_error"
