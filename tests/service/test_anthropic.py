"""AnthropicProvider against the fake Messages API upstream (a real subprocess), plus pure translation
tables for the request body, the stream fold and the error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.anthropic import AnthropicProvider, MessageStream
from switchboard.service.providers.anthropic_translate import (
    REFUSAL_TEXT,
    build_body,
    build_messages,
    parse_message,
    status_error,
)
from switchboard.service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    ReasoningOpaqueDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
    UsageDelta,
)
from switchboard.shared.errors import ApiError, UpstreamError
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
from tests.service.builders import (
    choice as _choice,
)

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    yield from start_fake("tests.fakes.anthropic")


@pytest.fixture()
def control(upstream: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream, timeout=5) as client:
        client.delete("/_requests")
        client.delete("/_stats")
        yield client


@pytest.fixture()
async def provider(upstream: str) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider("claude", base_url=upstream, api_key="sk-ant-test", default_max_tokens=64)
    yield p
    await p.aclose()


async def collect(p: AnthropicProvider, turn: Turn) -> list[Delta]:
    return [d async for d in p.stream(turn)]


def last_request(control: httpx.Client) -> dict[str, Any]:
    request: dict[str, Any] = control.get("/_requests").json()[-1]
    return request


# ---------------------------------------------------------------- against the fake upstream


async def test_echo_streaming(provider: AnthropicProvider, control: httpx.Client) -> None:
    deltas = await collect(provider, user_turn("echo"))
    assert text_of(deltas) == "echo: hello world"
    assert all(isinstance(d, TextDelta) for d in deltas[:-2])
    assert deltas[-2:] == [UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]
    request = last_request(control)
    assert request["headers"]["x-api-key"] == "sk-ant-test"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["body"] == {"model": "echo", "max_tokens": 64, "stream": True,
                               "messages": [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]}


async def test_echo_non_streaming(provider: AnthropicProvider, control: httpx.Client) -> None:
    deltas = await collect(provider, user_turn("echo", stream=False, max_output_tokens=100))
    assert deltas == [TextDelta("echo: hello world"), UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]
    assert last_request(control)["body"]["max_tokens"] == 100


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_call(provider: AnthropicProvider, control: httpx.Client, stream: bool) -> None:
    choice = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)
    deltas = await collect(provider, user_turn("tool-call", tools=[weather_tool()], tool_choice=choice,
                                               parallel_tool_calls=False, stream=stream))
    assert text_of(deltas) == "Let me check."
    calls = calls_of(deltas)
    # The tool_use is content block 1, but the first tool call: index 0.
    assert calls[0].index == 0 and calls[0].name == "get_weather"
    assert calls[0].call_id is not None and calls[0].call_id.startswith("toolu_")
    assert all(c.index == 0 and c.call_id is None and c.name is None for c in calls[1:])
    assert "".join(c.arguments for c in calls) in ('{"x": 1}', '{"x":1}')
    assert isinstance(deltas[-2], UsageDelta) and deltas[-1] == Finish("tool_calls")
    body = last_request(control)["body"]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather by city", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "maxProperties": 1}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_tool_result_turn_request_body(provider: AnthropicProvider, control: httpx.Client) -> None:
    items = [
        msg(SYSTEM, "You are terse."),
        msg(USER, "weather in Paris and Rome?"),
        reasoning(raw="need both cities", encrypted="sig-1"),
        msg(ASSISTANT, parts=[out_part("Checking.")]),
        call("call_1", "get_weather", '{"city":"Paris"}'),
        call("call_2", "get_weather", '{"city":"Rome"}'),
        output("call_1", "sunny"),
        output("call_2", parts=[text_part("rainy")]),
        msg(DEVELOPER, "Answer in one line."),
    ]
    deltas = await collect(provider, Turn(model="tool-call", items=items, tools=[weather_tool()]))
    assert text_of(deltas) == "tool said: rainy"
    assert deltas[-1] == Finish("stop")
    body = last_request(control)["body"]
    assert body["system"] == "You are terse.\n\nAnswer in one line."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "need both cities", "signature": "sig-1"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rainy"}]}]},
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_thinking(provider: AnthropicProvider, control: httpx.Client, stream: bool) -> None:
    turn = user_turn("reasoning", reasoning=effort(response_pb2.REASONING_EFFORT_LOW), stream=stream)
    deltas = await collect(provider, turn)
    thoughts = "".join(d.text for d in deltas if isinstance(d, ReasoningDelta))
    assert thoughts == "thinking hard"
    first_text = next(i for i, d in enumerate(deltas) if isinstance(d, TextDelta))
    assert max(i for i, d in enumerate(deltas) if isinstance(d, ReasoningDelta)) < first_text
    assert text_of(deltas) == "echo: hello world" and deltas[-1] == Finish("stop")
    body = last_request(control)["body"]
    # budget 1024 >= the default 64: max_tokens grows to keep 64 for the answer.
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["max_tokens"] == 1088


async def test_unsigned_reasoning_is_dropped(provider: AnthropicProvider, control: httpx.Client) -> None:
    items = [msg(USER, "q"), reasoning(summary="from another upstream"), msg(ASSISTANT, "a"), msg(USER, "again")]
    deltas = await collect(provider, Turn(model="echo", items=items))
    assert text_of(deltas) == "echo: again"
    assert last_request(control)["body"]["messages"][1] == {"role": "assistant",
                                                            "content": [{"type": "text", "text": "a"}]}


@pytest.mark.parametrize("stream", [True, False])
async def test_max_tokens_finishes_with_length(provider: AnthropicProvider, stream: bool) -> None:
    deltas = await collect(provider, user_turn("max-tokens", "a b c d e", stream=stream))
    assert text_of(deltas) == "echo: a " and deltas[-1] == Finish("length")


@pytest.mark.parametrize("stream", [True, False])
async def test_refusal(provider: AnthropicProvider, stream: bool) -> None:
    deltas = await collect(provider, user_turn("refusal", stream=stream))
    assert deltas == [RefusalDelta(REFUSAL_TEXT), UsageDelta(input_tokens=2, output_tokens=0),
                      Finish("content_filter")]


@pytest.mark.parametrize("stream", [True, False])
async def test_cache_usage(provider: AnthropicProvider, stream: bool) -> None:
    deltas = await collect(provider, user_turn("cached", stream=stream))
    assert deltas[-2] == UsageDelta(input_tokens=2 + 3 + 2, output_tokens=3, cached_tokens=3, cache_write_tokens=2)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("model", "status", "grpc_status", "message"), [
    ("fail-500", 500, grpc.StatusCode.UNAVAILABLE, "Internal server error"),
    ("fail-429", 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit"),
    ("overloaded", 529, grpc.StatusCode.UNAVAILABLE, "Overloaded"),
])
async def test_retryable_statuses(provider: AnthropicProvider, model: str, status: int,
                                  grpc_status: grpc.StatusCode, message: str, stream: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn(model, stream=stream))
    err = info.value
    assert err.retryable and err.upstream_status == status and err.status == grpc_status
    assert message in err.message
    if status == 429:
        assert err.retry_after == 1.0


async def test_prompt_too_long(provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("prompt-too-long"))
    assert info.value.code == "context_length_exceeded" and info.value.status == grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_error_event(provider: AnthropicProvider) -> None:
    got: list[Delta] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in provider.stream(user_turn("stream-error", "a b c d e f")):
            got.append(delta)
    assert info.value.message == "upstream error: Overloaded" and info.value.retryable
    assert got and not any(isinstance(d, Finish) for d in got)


async def test_drop_mid_stream(provider: AnthropicProvider) -> None:
    got: list[Delta] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in provider.stream(user_turn("drop-mid-stream", "a b c d e f g h")):
            got.append(delta)
    assert info.value.code == "upstream_stream_interrupted" and not info.value.retryable
    assert got and all(isinstance(d, TextDelta) for d in got)


async def test_cancellation_closes_upstream_request(provider: AnthropicProvider, control: httpx.Client) -> None:
    gen = provider.stream(user_turn("slow-300", "a b c d e f g h"))
    assert isinstance(await anext(gen), TextDelta)
    await gen.aclose()
    await wait_cancelled(control)


async def test_timeout_is_deadline_exceeded(provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("slow-1000", timeout=0.1))
    assert info.value.code == "upstream_timeout" and info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_connection_is_reused(provider: AnthropicProvider) -> None:
    before = provider.connections_opened
    for stream in (True, True, False, True):
        await collect(provider, user_turn("echo", stream=stream))
    # Four requests, streamed and not, over at most one new keep-alive connection.
    assert provider.connections_opened - before <= 1


def test_fake_rejects_unsigned_thinking(control: httpx.Client) -> None:
    body = {"model": "echo", "max_tokens": 10, "messages": [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]}, {"role": "user", "content": "q"}]}
    r = control.post("/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- pure translation

PDF = "data:application/pdf;base64,JVBERi0="
MESSAGE_CASES: list[tuple[str, list[items_pb2.Item], list[str], list[dict[str, Any]]]] = [
    ("instructions are hoisted", [msg(SYSTEM, "s"), msg(USER, "hi"), msg(DEVELOPER, parts=[text_part("d")])],
     ["s", "d"], [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    ("user media", [msg(USER, parts=[
        text_part("look"), image_part("data:image/png;base64,AAA"), image_part("https://x/i.png"),
        file_part(filename="a.pdf", file_data=PDF), file_part(file_data="aGk=", filename="raw.pdf"),
        file_part(file_data="data:text/plain;base64,aGk="), file_part(file_url="https://x/a.pdf")])],
     [], [{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
         {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}},
         {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
          "title": "a.pdf"},
         {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "aGk="},
          "title": "raw.pdf"},
         {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}},
         {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]),
    ("assistant text, refusal, empty text skipped", [
        msg(ASSISTANT, parts=[out_part("a"), out_part(""), P(refusal=content_pb2.RefusalContent(refusal="no"))])],
     [], [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "no"}]}]),
    ("tool results lead the user message", [
        call("c1", "f", ""), output("c1", "1"), output("c2", ""), msg(USER, "next")],
     [], [{"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "1"},
                                       {"type": "tool_result", "tool_use_id": "c2"},
                                       {"type": "text", "text": "next"}]}]),
    ("tool result media", [output("c1", parts=[text_part("see"), image_part("https://x/1.png"), text_part("")])],
     [], [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [
         {"type": "text", "text": "see"}, {"type": "image", "source": {"type": "url", "url": "https://x/1.png"}}]}]}]),
    ("signed reasoning from summary; unsigned dropped", [
        reasoning(summary="s", encrypted="sig"), reasoning(raw="lost"), msg(ASSISTANT, "a")],
     [], [{"role": "assistant", "content": [{"type": "thinking", "thinking": "s", "signature": "sig"},
                                            {"type": "text", "text": "a"}]}]),
    ("empty user message left out", [msg(USER, ""), msg(USER, "x")],
     [], [{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
]


@pytest.mark.parametrize(("items", "system", "messages"), [c[1:] for c in MESSAGE_CASES],
                         ids=[c[0] for c in MESSAGE_CASES])
def test_build_messages(items: list[items_pb2.Item], system: list[str], messages: list[dict[str, Any]]) -> None:
    assert build_messages(items) == (system, messages)


@pytest.mark.parametrize(("item", "fragment"), [
    (call("c9", "f", "{not json"), "function_call 'c9' (f) are not valid JSON"),
    (call("c9", "f", "[1]"), "must be a JSON object"),
    (msg(USER, parts=[image_part(file_id="file-1")]), "not file ids"),
    (msg(USER, parts=[image_part("data:image/png,AAA")]), "base64"),
    (msg(USER, parts=[file_part(file_data="data:application/zip;base64,AA")]), "not application/zip"),
    (msg(USER, parts=[P(input_audio=content_pb2.InputAudioContent(data="x", format="wav"))]), "input_audio"),
    (items_pb2.Item(compaction=items_pb2.CompactionItem(encrypted_content="x")), "compaction"),
])
def test_untranslatable_input_is_rejected(item: items_pb2.Item, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        build_messages([item])
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message


SCHEMA = response_pb2.TextConfig(format=response_pb2.TextFormat(json_schema=response_pb2.JsonSchemaFormat(
    name="out", strict=True, schema=struct({"type": "object"}))))
BODY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sampling", dict(max_output_tokens=5, temperature=0.5, top_p=0.9, top_k=40, presence_penalty=0.1,
                      top_logprobs=2, user="u1"),
     {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "metadata": {"user_id": "u1"}}),
    ("auto", dict(tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_AUTO)), {"tool_choice": {"type": "auto"}}),
    ("none ignores parallel", dict(tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_NONE),
                                   parallel_tool_calls=False), {"tool_choice": {"type": "none"}}),
    ("function", dict(tool_choice=_choice(function=tools_pb2.FunctionToolChoice(name="get_weather"))),
     {"tool_choice": {"type": "tool", "name": "get_weather"}}),
    ("parallel off alone", dict(parallel_tool_calls=False),
     {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ("parallel on is the default", dict(parallel_tool_calls=True), {}),
    ("effort medium", dict(max_output_tokens=8000, reasoning=effort(response_pb2.REASONING_EFFORT_MEDIUM)),
     {"max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4096}}),
    ("effort high grows max_tokens", dict(max_output_tokens=1000, reasoning=effort(response_pb2.REASONING_EFFORT_HIGH)),
     {"max_tokens": 17384, "thinking": {"type": "enabled", "budget_tokens": 16384}}),
    ("explicit budget, floored", dict(reasoning=response_pb2.ReasoningConfig(max_tokens=10)),
     {"max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
    ("effort none", dict(reasoning=effort(response_pb2.REASONING_EFFORT_NONE)), {}),
    ("disabled", dict(reasoning=response_pb2.ReasoningConfig(enabled=False, max_tokens=2000)), {}),
    ("summary only", dict(reasoning=response_pb2.ReasoningConfig(summary=response_pb2.REASONING_SUMMARY_AUTO)), {}),
    ("forced tool call wins over thinking", dict(reasoning=effort(response_pb2.REASONING_EFFORT_HIGH),
                                                 tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)),
     {"tool_choice": {"type": "any"}}),
]


@pytest.mark.parametrize(("kw", "extra"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_build_body(kw: dict[str, Any], extra: dict[str, Any]) -> None:
    body = build_body(Turn(model="m", items=[msg(USER, "hi")], stream=False, tools=[weather_tool()], **kw))
    assert body.pop("tools")[0]["name"] == "get_weather"
    expected = {"model": "m", "stream": False, "max_tokens": 4096,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert body == expected | extra


def test_tools_without_parameters() -> None:
    required = _choice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)
    body = build_body(Turn(model="m", items=[], tools=[tools_pb2.FunctionTool(name="b")], tool_choice=required))
    assert body["tools"] == [{"name": "b", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "any"}
    assert "tools" not in build_body(Turn(model="m", items=[], tool_choice=required))


def test_structured_output_becomes_an_instruction() -> None:
    body = build_body(Turn(model="m", items=[msg(SYSTEM, "Be brief.")], text=SCHEMA))
    assert body["system"].startswith("Be brief.\n\nRespond with JSON that conforms to the JSON Schema 'out'")
    assert body["system"].endswith('\n\n{"type":"object"}')
    json_object = response_pb2.TextConfig(format=response_pb2.TextFormat(json_object=response_pb2.JsonObjectFormat()))
    assert build_body(Turn(model="m", items=[], text=json_object))["system"].startswith("Respond with a single valid")


def _fold(events: list[dict[str, Any]]) -> list[Delta]:
    state = MessageStream()
    deltas = [d for e in events for d in state.feed(e)]
    return deltas + state.end()


START = {"type": "message_start", "message": {"usage": {"input_tokens": 4, "cache_read_input_tokens": 10,
                                                        "cache_creation_input_tokens": 1, "output_tokens": 1}}}


def _end(reason: str) -> list[dict[str, Any]]:
    return [{"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 7}},
            {"type": "message_stop"}]


def _block(index: int, block: dict[str, Any], *deltas: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "content_block_start", "index": index, "content_block": block},
            *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": index}]


USAGE = UsageDelta(input_tokens=15, output_tokens=7, cached_tokens=10, cache_write_tokens=1)
FOLD_CASES: list[tuple[str, list[dict[str, Any]], list[Delta]]] = [
    ("thinking, text, two calls", [
        START, *_block(0, {"type": "thinking", "thinking": ""}, {"type": "thinking_delta", "thinking": "t"},
                       {"type": "signature_delta", "signature": "s"}),
        {"type": "ping"}, *_block(1, {"type": "text", "text": ""}, {"type": "text_delta", "text": "a"}),
        *_block(2, {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                {"type": "input_json_delta", "partial_json": ""}, {"type": "input_json_delta", "partial_json": "{}"}),
        *_block(3, {"type": "tool_use", "id": "t2", "name": "g", "input": {}}),
        *_block(4, {"type": "tool_use", "id": "t3", "name": "h", "input": {"a": 1}}),
        {"type": "some_future_event"}, *_end("tool_use")],
     [ReasoningDelta("t"), ReasoningOpaqueDelta("s"), TextDelta("a"), ToolCallDelta(0, "t1", "f"),
      ToolCallDelta(0, arguments="{}"),
      ToolCallDelta(1, "t2", "g"), ToolCallDelta(1, arguments="{}"), ToolCallDelta(2, "t3", "h"),
      ToolCallDelta(2, arguments='{"a":1}'), USAGE, Finish("tool_calls")]),
    ("refusal after text", [START, *_block(0, {"type": "text", "text": "I"}), *_end("refusal")],
     [TextDelta("I"), USAGE, Finish("content_filter")]),
    ("pause_turn and unknown reasons stop", [START, *_end("pause_turn")], [USAGE, Finish("stop")]),
    ("max_tokens", [START, *_end("max_tokens")], [USAGE, Finish("length")]),
    ("context window", [START, *_end("model_context_window_exceeded")], [USAGE, Finish("length")]),
    ("no message_stop after the stop reason", [START, _end("end_turn")[0]], [USAGE, Finish("stop")]),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES])
def test_stream_fold(events: list[dict[str, Any]], expected: list[Delta]) -> None:
    assert _fold(events) == expected


@pytest.mark.parametrize(("events", "code", "retryable"), [
    ([START, *_block(0, {"type": "text", "text": ""})], "upstream_stream_interrupted", False),
    ([START, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}],
     "upstream_error", True),
    ([START, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}],
     "upstream_error", False),
    ([{"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}}],
     "upstream_protocol_error", False),
])
def test_stream_fold_errors(events: list[dict[str, Any]], code: str, retryable: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        _fold(events)
    assert (info.value.code, info.value.retryable) == (code, retryable)


def test_parse_message() -> None:
    usage = {"input_tokens": 4, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 1, "output_tokens": 7}
    data = {"content": [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "redacted_thinking"},
                        {"type": "text", "text": "a"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}],
            "stop_reason": "tool_use", "usage": usage}
    assert parse_message(data) == [ReasoningDelta("t"), ReasoningOpaqueDelta("s"), TextDelta("a"),
                                   ToolCallDelta(0, "t1", "f", '{"x":1}'), USAGE, Finish("tool_calls")]


@pytest.mark.parametrize(("status", "body", "code", "retryable", "grpc_status"), [
    (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 9 > 8"}}',
     "context_length_exceeded", True, grpc.StatusCode.INVALID_ARGUMENT),
    (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}', "upstream_error", False,
     grpc.StatusCode.INVALID_ARGUMENT),
    (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
     "upstream_error", False, grpc.StatusCode.UNAVAILABLE),
    (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "upstream_error", True,
     grpc.StatusCode.UNAVAILABLE),
])
def test_status_error(status: int, body: bytes, code: str, retryable: bool, grpc_status: grpc.StatusCode) -> None:
    err = status_error(status, body, {})
    assert isinstance(err, UpstreamError)
    assert (err.code, err.retryable, err.status, err.upstream_status) == (code, retryable, grpc_status, status)
