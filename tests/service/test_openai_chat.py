"""OpenAIChatProvider against the fake Chat Completions upstream (a real subprocess), plus pure
translation tables."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
    UsageDelta,
)
from switchboard.service.providers.chat_translate import build_body, build_messages, parse_completion, status_error
from switchboard.service.providers.openai_chat import OpenAIChatProvider
from switchboard.shared.errors import ApiError, UpstreamError
from tests.service.builders import (
    ASSISTANT,
    DEVELOPER,
    SYSTEM,
    USER,
    P,
    call,
    msg,
    out_part,
    output,
    reasoning,
    start_fake,
    struct,
    text_of,
    text_part,
    user_turn,
)
from tests.service.builders import choice as _choice

# ---------------------------------------------------------------- builders


def image_part(url: str, detail: int = 0) -> P:
    return P(input_image=content_pb2.InputImageContent(image_url=url, detail=detail))  # type: ignore[arg-type]


def tc(call_id: str, name: str, args: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def weather_tool(name: str = "get_weather") -> tools_pb2.FunctionTool:
    return tools_pb2.FunctionTool(name=name, description="Weather by city", strict=True,
                                  parameters=struct({"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"], "maxProperties": 1}))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    yield from start_fake("tests.fakes.openai_chat")


@pytest.fixture()
def control(upstream: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream, timeout=5) as client:
        client.delete("/_requests")
        client.delete("/_stats")
        yield client


@pytest.fixture()
async def provider(upstream: str) -> AsyncIterator[OpenAIChatProvider]:
    p = OpenAIChatProvider("fake", base_url=upstream + "/v1", api_key="sk-test")
    yield p
    await p.aclose()


async def collect(p: OpenAIChatProvider, turn: Turn) -> list[Delta]:
    return [d async for d in p.stream(turn)]


def last_body(control: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = control.get("/_requests").json()[-1]["body"]
    return body


# ---------------------------------------------------------------- against the fake upstream


async def test_echo_streaming(provider: OpenAIChatProvider, control: httpx.Client) -> None:
    deltas = await collect(provider, user_turn("echo"))
    assert text_of(deltas) == "echo: hello world"
    assert all(isinstance(d, TextDelta) for d in deltas[:-2])
    assert deltas[-2:] == [UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]
    request = control.get("/_requests").json()[-1]
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["body"] == {"model": "echo", "stream": True, "stream_options": {"include_usage": True},
                               "messages": [{"role": "user", "content": "hello world"}]}


async def test_echo_non_streaming(provider: OpenAIChatProvider, control: httpx.Client) -> None:
    deltas = await collect(provider, user_turn("echo", stream=False))
    assert deltas == [TextDelta("echo: hello world"), UsageDelta(input_tokens=2, output_tokens=3), Finish("stop")]
    assert last_body(control) == {"model": "echo", "stream": False,
                                  "messages": [{"role": "user", "content": "hello world"}]}


@pytest.mark.parametrize("stream", [True, False])
async def test_max_output_tokens_finishes_with_length(provider: OpenAIChatProvider, control: httpx.Client,
                                                      stream: bool) -> None:
    deltas = await collect(provider, user_turn("fixed-10", max_output_tokens=3, stream=stream))
    assert text_of(deltas) == "tok tok tok "
    assert deltas[-1] == Finish("length")
    assert last_body(control)["max_tokens"] == 3


async def test_conversation_translation(provider: OpenAIChatProvider, control: httpx.Client) -> None:
    items = [
        msg(SYSTEM, "You are terse."),
        msg(DEVELOPER, "Use tools."),
        msg(USER, "weather in Paris and Rome?"),
        reasoning(raw="need both cities"),
        msg(ASSISTANT, parts=[out_part("Checking.")]),
        call("call_1", "get_weather", '{"city":"Paris"}'),
        call("call_2", "get_weather", '{"city":"Rome"}'),
        output("call_1", "sunny"),
        output("call_2", parts=[text_part("rainy")]),
        reasoning(summary="both known"),
        msg(ASSISTANT, parts=[out_part("Paris sunny, Rome rainy.")]),
        msg(USER, parts=[text_part("thanks")]),
    ]
    deltas = await collect(provider, Turn(model="echo", items=items, tools=[weather_tool()]))
    assert text_of(deltas) == "echo: thanks"
    assert last_body(control)["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "need both cities",
         "tool_calls": [tc("call_1", "get_weather", '{"city":"Paris"}'),
                        tc("call_2", "get_weather", '{"city":"Rome"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
        {"role": "assistant", "content": "Paris sunny, Rome rainy.", "reasoning_content": "both known"},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]


async def test_tool_call_streaming(provider: OpenAIChatProvider, control: httpx.Client) -> None:
    choice = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)
    deltas = await collect(provider, user_turn("tool-call", tools=[weather_tool()], tool_choice=choice,
                                               parallel_tool_calls=False))
    calls = [d for d in deltas if isinstance(d, ToolCallDelta)]
    assert calls[0].index == 0 and calls[0].name == "get_weather"
    assert calls[0].call_id is not None and calls[0].call_id.startswith("call_")
    assert all(c.index == 0 and c.call_id is None and c.name is None for c in calls[1:])
    assert "".join(c.arguments for c in calls) == '{"x": 1}'
    assert isinstance(deltas[-2], UsageDelta) and deltas[-1] == Finish("tool_calls")
    body = last_body(control)
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather by city", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "maxProperties": 1}}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False


async def test_tool_call_non_streaming(provider: OpenAIChatProvider) -> None:
    deltas = await collect(provider, user_turn("tool-call", tools=[weather_tool()], stream=False))
    assert isinstance(deltas[0], ToolCallDelta)
    assert (deltas[0].index, deltas[0].name, deltas[0].arguments) == (0, "get_weather", '{"x": 1}')
    assert deltas[-1] == Finish("tool_calls")


async def test_reasoning_deltas(provider: OpenAIChatProvider) -> None:
    deltas = await collect(provider, user_turn("reasoning"))
    assert [d for d in deltas if isinstance(d, ReasoningDelta)] == [ReasoningDelta("thinking"),
                                                                    ReasoningDelta(" hard")]
    assert deltas.index(ReasoningDelta(" hard")) < deltas.index(TextDelta("echo: "))
    assert deltas[-2] == UsageDelta(input_tokens=2, output_tokens=5, reasoning_tokens=2)
    assert deltas[-1] == Finish("stop")


async def test_reasoning_non_streaming(provider: OpenAIChatProvider) -> None:
    deltas = await collect(provider, user_turn("reasoning", stream=False))
    assert deltas[:2] == [ReasoningDelta("thinking hard"), TextDelta("echo: hello world")]


@pytest.mark.parametrize("stream", [True, False])
async def test_fail_500_is_retryable(provider: OpenAIChatProvider, stream: bool) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("fail-500", stream=stream))
    err = info.value
    assert err.retryable and err.upstream_status == 500
    assert "The server had an error while processing your request." in err.message
    assert "Traceback" not in err.message


async def test_fail_400_is_not_retryable(provider: OpenAIChatProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("fail-400"))
    assert not info.value.retryable and info.value.upstream_status == 400
    assert "Invalid request (fake fail-400)." in info.value.message
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


async def test_fail_429_carries_retry_after(provider: OpenAIChatProvider) -> None:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("fail-429"))
    assert info.value.retryable and info.value.upstream_status == 429 and info.value.retry_after == 1.0
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_drop_mid_stream(provider: OpenAIChatProvider) -> None:
    got: list[Delta] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in provider.stream(user_turn("drop-mid-stream", "a b c d e f g h")):
            got.append(delta)
    assert info.value.code == "upstream_stream_interrupted" and not info.value.retryable
    assert got and all(isinstance(d, TextDelta) for d in got)
    assert not any(isinstance(d, Finish) for d in got)


async def test_cancellation_closes_upstream_request(provider: OpenAIChatProvider, control: httpx.Client) -> None:
    gen = provider.stream(user_turn("slow-300", "a b c d e f g h"))
    first = await anext(gen)
    assert isinstance(first, TextDelta)
    await gen.aclose()  # type: ignore[attr-defined]
    for _ in range(100):
        if control.get("/_stats").json()["cancelled"] >= 1:
            break
        await asyncio.sleep(0.02)
    assert control.get("/_stats").json()["cancelled"] >= 1


async def test_task_cancellation_closes_upstream_request(provider: OpenAIChatProvider,
                                                         control: httpx.Client) -> None:
    async def consume() -> None:
        async for _ in provider.stream(user_turn("slow-300", "a b c d e f g h")):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.35)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if control.get("/_stats").json()["cancelled"] >= 1:
            break
        await asyncio.sleep(0.02)
    assert control.get("/_stats").json()["cancelled"] >= 1


@pytest.mark.parametrize("stream", [True, False])
async def test_timeout_is_deadline_exceeded(provider: OpenAIChatProvider, stream: bool) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError) as info:
        await collect(provider, user_turn("slow-1000", timeout=0.1, stream=stream))
    assert loop.time() - started < 0.8
    assert info.value.code == "upstream_timeout" and info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not info.value.retryable


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = OpenAIChatProvider("down", base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(UpstreamError) as info:
            await collect(p, user_turn("echo"))
    finally:
        await p.aclose()
    assert info.value.code == "upstream_unavailable" and info.value.retryable
    assert "127.0.0.1" not in info.value.message


async def test_connection_is_reused(provider: OpenAIChatProvider) -> None:
    before = provider.connections_opened
    for stream in (True, True, False, True):
        await collect(provider, user_turn("echo", stream=stream))
    # Four requests, streamed and not, over at most one new keep-alive connection.
    assert provider.connections_opened - before <= 1


# ---------------------------------------------------------------- pure translation

MESSAGE_CASES: list[tuple[str, list[items_pb2.Item], list[dict[str, Any]]]] = [
    ("string and parts", [msg(SYSTEM, parts=[text_part("a"), text_part("b")]), msg(USER, "hi")],
     [{"role": "system", "content": "ab"}, {"role": "user", "content": "hi"}]),
    ("user media parts", [msg(USER, parts=[
        text_part("look"),
        image_part("https://x/img.png", content_pb2.IMAGE_DETAIL_HIGH),
        image_part("data:image/png;base64,AAA"),
        P(input_file=content_pb2.InputFileContent(filename="a.pdf", file_data="data:application/pdf;base64,AA")),
        P(input_file=content_pb2.InputFileContent(file_id="file-1")),
        P(input_audio=content_pb2.InputAudioContent(data="UklG", format="wav")),
    ])],
     [{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image_url", "image_url": {"url": "https://x/img.png", "detail": "high"}},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
         {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"}},
         {"type": "file", "file": {"file_id": "file-1"}},
         {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
     ]}]),
    ("assistant text and refusal", [
        msg(ASSISTANT, parts=[out_part("a"), out_part("b")]),
        msg(ASSISTANT, parts=[P(refusal=content_pb2.RefusalContent(refusal="no"))]),
    ], [{"role": "assistant", "content": "ab"}, {"role": "assistant", "content": None, "refusal": "no"}]),
    ("calls without assistant text merge", [msg(USER, "q"), call("c1", "f", "{}"), call("c2", "g", "{}")],
     [{"role": "user", "content": "q"},
      {"role": "assistant", "content": None, "tool_calls": [tc("c1", "f", "{}"), tc("c2", "g", "{}")]}]),
    ("calls split by an output stay apart", [
        call("c1", "f", "{}"), output("c1", "1"), call("c2", "f", "{}"), output("c2", "2")],
     [{"role": "assistant", "content": None, "tool_calls": [tc("c1", "f", "{}")]},
      {"role": "tool", "tool_call_id": "c1", "content": "1"},
      {"role": "assistant", "content": None, "tool_calls": [tc("c2", "f", "{}")]},
      {"role": "tool", "tool_call_id": "c2", "content": "2"}]),
    ("reasoning before a call", [reasoning(raw="r1"), reasoning(summary="s2"), call("c1", "f", "{}")],
     [{"role": "assistant", "content": None, "reasoning_content": "r1\n\ns2", "tool_calls": [tc("c1", "f", "{}")]}]),
    ("raw reasoning wins over summary", [reasoning(raw="raw", summary="sum"), msg(ASSISTANT, "a")],
     [{"role": "assistant", "content": "a", "reasoning_content": "raw"}]),
    ("reasoning with nothing after is kept", [msg(USER, "q"), reasoning(summary="s"), msg(USER, "again")],
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "reasoning_content": "s"},
      {"role": "user", "content": "again"}]),
    ("encrypted-only reasoning has no text", [reasoning(encrypted="gAAA"), msg(ASSISTANT, "a")],
     [{"role": "assistant", "content": "a"}]),
    ("tool images follow the tool messages", [
        call("c1", "f", "{}"), call("c2", "f", "{}"),
        output("c1", parts=[text_part("see"), image_part("https://x/1.png")]), output("c2", "ok")],
     [{"role": "assistant", "content": None, "tool_calls": [tc("c1", "f", "{}"), tc("c2", "f", "{}")]},
      {"role": "tool", "tool_call_id": "c1", "content": "see"},
      {"role": "tool", "tool_call_id": "c2", "content": "ok"},
      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/1.png"}}]}]),
]


@pytest.mark.parametrize(("items", "expected"), [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_build_messages(items: list[items_pb2.Item], expected: list[dict[str, Any]]) -> None:
    assert build_messages(items) == expected


def test_developer_role_flag() -> None:
    items = [msg(DEVELOPER, "d")]
    assert build_messages(items) == [{"role": "developer", "content": "d"}]
    assert build_messages(items, developer_role=False) == [{"role": "system", "content": "d"}]


@pytest.mark.parametrize("item", [
    items_pb2.Item(compaction=items_pb2.CompactionItem(encrypted_content="x")),
    items_pb2.Item(item_reference=items_pb2.ItemReference(id="msg_1")),
    msg(USER, parts=[P(input_image=content_pb2.InputImageContent(file_id="file-1"))]),
])
def test_untranslatable_input_is_rejected(item: items_pb2.Item) -> None:
    with pytest.raises(ApiError) as info:
        build_messages([item])
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


BODY_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sampling", dict(max_output_tokens=5, temperature=0.5, top_p=0.9, presence_penalty=0.1,
                      frequency_penalty=0.2, top_k=40, top_logprobs=3, user="u1"),
     {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.1, "frequency_penalty": 0.2,
      "top_k": 40, "logprobs": True, "top_logprobs": 3, "user": "u1"}),
    ("tool choice function", dict(tools=[weather_tool()], tool_choice=_choice(
        function=tools_pb2.FunctionToolChoice(name="get_weather")), parallel_tool_calls=True),
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": True}),
    ("tool choice none", dict(tools=[weather_tool()], tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_NONE)),
     {"tool_choice": "none"}),
    ("no tools, no tool settings", dict(tool_choice=_choice(mode=tools_pb2.TOOL_CHOICE_MODE_AUTO),
                                        parallel_tool_calls=True), {}),
    ("json object", dict(text=response_pb2.TextConfig(format=response_pb2.TextFormat(
        json_object=response_pb2.JsonObjectFormat()))), {"response_format": {"type": "json_object"}}),
    ("json schema", dict(text=response_pb2.TextConfig(format=response_pb2.TextFormat(
        json_schema=response_pb2.JsonSchemaFormat(name="out", description="d", strict=True,
                                                  schema=struct({"type": "object"}))))),
     {"response_format": {"type": "json_schema", "json_schema": {
         "name": "out", "description": "d", "strict": True, "schema": {"type": "object"}}}}),
    ("reasoning effort", dict(reasoning=response_pb2.ReasoningConfig(effort=response_pb2.REASONING_EFFORT_HIGH)),
     {"reasoning_effort": "high"}),
]


@pytest.mark.parametrize(("kw", "extra"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_build_body(kw: dict[str, Any], extra: dict[str, Any]) -> None:
    body = build_body(Turn(model="m", items=[msg(USER, "hi")], stream=False, **kw))
    body.pop("tools", None)
    assert body == {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_max_tokens_param() -> None:
    body = build_body(Turn(model="m", items=[], max_output_tokens=7), max_tokens_param="max_completion_tokens")
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


@pytest.mark.parametrize(("status", "body", "code", "retryable", "grpc_status"), [
    (400, b'{"error": {"message": "too long", "code": "context_length_exceeded"}}', "context_length_exceeded",
     True, grpc.StatusCode.INVALID_ARGUMENT),
    (400, b'{"object": "error", "message": "This model\'s maximum context length is 4096 tokens."}',
     "context_length_exceeded", True, grpc.StatusCode.INVALID_ARGUMENT),
    (404, b'{"error": {"message": "no such model"}}', "upstream_error", False, grpc.StatusCode.UNAVAILABLE),
    (408, b"", "upstream_error", True, grpc.StatusCode.UNAVAILABLE),
    (503, b"<html>busy</html>", "upstream_error", True, grpc.StatusCode.UNAVAILABLE),
])
def test_status_error(status: int, body: bytes, code: str, retryable: bool, grpc_status: grpc.StatusCode) -> None:
    err = status_error(status, body, {})
    assert isinstance(err, UpstreamError)
    assert (err.code, err.retryable, err.status, err.upstream_status) == (code, retryable, grpc_status, status)
    assert err.message.startswith(f"upstream returned HTTP {status}")


def test_parse_completion_maps_legacy_finish_and_details() -> None:
    data = {"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "function": {"name": "g", "arguments": "{}"}}]}, "finish_reason": "function_call"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                  "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
                  "completion_tokens_details": {"reasoning_tokens": 1}}}
    assert parse_completion(data) == [
        ToolCallDelta(0, "c1", "f", "{}"), ToolCallDelta(1, "c2", "g", "{}"),
        UsageDelta(input_tokens=3, output_tokens=4, cached_tokens=2, reasoning_tokens=1, cache_write_tokens=1),
        Finish("tool_calls")]
