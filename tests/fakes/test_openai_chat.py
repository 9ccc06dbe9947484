"""Tests of the fake OpenAI Chat Completions upstream, run as a real subprocess."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.service.builders import start_fake

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from start_fake("tests.fakes.openai_chat")


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as c:
        c.delete("/_requests")
        yield c


def _sse(client: httpx.Client, body: dict[str, Any]) -> list[Any]:
    events: list[Any] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def test_echo_non_stream(client: httpx.Client) -> None:
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello big"},
                                         {"type": "input_text", "text": " world"}]}]
    r = client.post("/v1/chat/completions", json={"model": "echo", "messages": msgs})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "echo"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: hello big world"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 9
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}


def test_echo_stream(client: httpx.Client) -> None:
    events = _sse(client, {"model": "echo", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": "one  two three"}]})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "echo" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    choice_chunks = chunks[:-1]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in choice_chunks]
    assert "".join(deltas) == "echo: one  two three"
    assert [c["choices"][0]["finish_reason"] for c in choice_chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["prompt_tokens"] == 3


def test_echo_stream_max_tokens(client: httpx.Client) -> None:
    events = _sse(client, {"model": "echo", "stream": True, "max_tokens": 2,
                           "messages": [{"role": "user", "content": "a b c d"}]})
    chunks = events[:-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: a "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_fail_500(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fail-500", "messages": []})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["param"] is None and err["code"] is None
    assert isinstance(err["message"], str)


def test_fail_429_retry_after(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fail-429", "messages": []})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_tool_call_stream(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    events = _sse(client, {"model": "tool-call", "stream": True, "tools": tools,
                           "messages": [{"role": "user", "content": "weather?"}]})
    chunks = events[:-1]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["id"].startswith("call_")
    assert calls[0]["type"] == "function"
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    frags = [tc["function"]["arguments"] for tc in calls[1:]]
    assert frags == ['{"x"', ": 1}"]
    assert orjson.loads("".join(frags)) == {"x": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_result_answer(client: httpx.Client) -> None:
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = client.post("/v1/chat/completions", json={"model": "tool-call", "messages": msgs,
                                                  "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert r.json()["choices"][0]["message"]["content"] == "tool said: sunny"


def test_drop_mid_stream(client: httpx.Client) -> None:
    body = {"model": "drop-mid-stream", "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/v1/chat/completions", json=body) as r:
        for part in r.iter_raw():
            received += part
    assert received.count(b'"content":') == 4  # role chunk + 3 content chunks
    assert b"[DONE]" not in received


def test_requests_recording(client: httpx.Client) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test",
                                                            "traceparent": "00-abc-def-01", "x-other": "1"})
    client.post("/v1/chat/completions", json={**body, "model": "fail-400"})
    recorded = client.get("/_requests").json()
    assert recorded == [
        {"headers": {"authorization": "Bearer sk-test", "traceparent": "00-abc-def-01"}, "body": body},
        {"headers": {}, "body": {**body, "model": "fail-400"}},
    ]
    assert client.delete("/_requests").status_code == 200
    assert client.get("/_requests").json() == []


def test_models_and_health(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and any(m["id"] == "echo" for m in models["data"])


def test_slow_cancel_counted(client: httpx.Client) -> None:
    client.delete("/_stats")
    body = {"model": "slow-300", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, timeout=0.1)
    for _ in range(50):
        if client.get("/_stats").json()["cancelled"] == 1:
            break
        time.sleep(0.02)
    assert client.get("/_stats").json() == {"cancelled": 1, "completed": 0}
