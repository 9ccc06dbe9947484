"""Responses semantics end to end with the openai SDK: tools, tool rules, reasoning, logprobs, usage and cost."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.stack import Stack, upstream_requests
from tests.e2e.test_http import sse_events
from tests.streams import check_stream

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def _sent(stack: Stack, marker: str) -> dict[str, Any]:
    body: dict[str, Any] = [r for r in upstream_requests(stack.upstream) if marker in json.dumps(r["body"])][-1]["body"]
    return body


@pytest.mark.parametrize("stream", [False, True])
def test_agent_tool_loop(client: openai.OpenAI, stack: Stack, stream: bool) -> None:
    marker = f"loop-{time.monotonic_ns()}"
    kwargs: dict[str, Any] = {"model": "fake/tool-call", "tools": [WEATHER]}
    if stream:
        events = list(client.responses.create(input=marker, stream=True, **kwargs))
        assert "response.function_call_arguments.delta" in [e.type for e in events]
        assert "response.output_text.delta" not in [e.type for e in events]
        first = events[-1].response  # type: ignore[union-attr]
    else:
        first = client.responses.create(input=marker, **kwargs)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"x": 1} and call.call_id and call.status == "completed"
    second = client.responses.create(input=[
        {"role": "user", "content": marker},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ], **kwargs)
    assert second.output_text == "tool said: sunny"
    messages = _sent(stack, marker)["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_tool_choice_none_never_returns_a_call(client: openai.OpenAI) -> None:
    response = client.responses.create(model="fake/tool-call", input="x", tools=[WEATHER],  # type: ignore[list-item]
                                       tool_choice="none")
    assert all(item.type != "function_call" for item in response.output)


def test_allowed_tools_is_a_hard_constraint(client: openai.OpenAI, stack: Stack) -> None:
    marker = f"allowed-{time.monotonic_ns()}"
    response = client.responses.create(
        model="fake/tool-call", input=marker, tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_time"}]})
    assert [t["function"]["name"] for t in _sent(stack, marker)["tools"]] == ["get_time"]
    assert [i.name for i in response.output if i.type == "function_call"] == ["get_time"]


def test_a_call_outside_the_declared_tools_is_dropped(http: httpx.Client) -> None:
    # The fake calls the first declared tool; with a named choice of the other one, that call is not allowed.
    body = http.post("/v1/responses", json={"model": "fake/tool-call", "input": "x", "tools": [WEATHER, TIME],
                                            "tool_choice": {"type": "function", "name": "get_time"}}).json()
    assert [i for i in body["output"] if i["type"] == "function_call"] == []


def test_namespace_tools_round_trip(http: httpx.Client, stack: Stack) -> None:
    marker = f"ns-{time.monotonic_ns()}"
    namespace = {"type": "namespace", "name": "shell", "description": "Shell tools",
                 "tools": [{"type": "function", "name": "run", "parameters": {"type": "object"}}]}
    body = http.post("/v1/responses", json={"model": "fake/tool-call", "input": marker, "tools": [namespace]}).json()
    assert _sent(stack, marker)["tools"][0]["function"]["name"] == "shell__run"
    call = body["output"][0]
    assert call["type"] == "function_call" and call["name"] == "run" and call["namespace"] == "shell"
    follow = http.post("/v1/responses", json={"model": "fake/tool-call", "tools": [namespace], "input": [
        {"role": "user", "content": marker + "-2"}, call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}]}).json()
    assert follow["output_text"] == "tool said: ok"
    assert _sent(stack, marker + "-2")["messages"][1]["tool_calls"][0]["function"]["name"] == "shell__run"


def test_max_tool_calls_and_parallel_false(http: httpx.Client) -> None:
    body = http.post("/v1/responses", json={"model": "fake/tool-call", "input": "x", "tools": [WEATHER],
                                            "max_tool_calls": 1, "parallel_tool_calls": False}).json()
    assert len([i for i in body["output"] if i["type"] == "function_call"]) == 1
    assert body["max_tool_calls"] == 1 and body["parallel_tool_calls"] is False


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_items_and_encrypted_round_trip(http: httpx.Client, stack: Stack, stream: bool) -> None:
    request = {"model": "fake/reasoning", "input": "why", "store": False, "stream": stream,
               "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"}}
    if stream:
        with http.stream("POST", "/v1/responses", json=request) as reply:
            events, _ = sse_events(reply)
        final = check_stream(events)
        assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == ["thinking", " hard"]
    else:
        final = http.post("/v1/responses", json=request).json()
    reasoning = final["output"][0]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "thinking hard"}]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    sealed = reasoning["encrypted_content"]
    assert "thinking" not in sealed

    # Send it back without the readable content, as a stateless client (Codex) does.
    marker = f"restore-{time.monotonic_ns()}"
    returned = {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": sealed}
    follow = http.post("/v1/responses", json={"model": "fake/echo", "store": False, "input": [
        {"role": "user", "content": "why"}, returned, final["output"][1], {"role": "user", "content": marker}]})
    assert follow.status_code == 200, follow.text
    assistant = _sent(stack, marker)["messages"][1]
    assert assistant["role"] == "assistant" and assistant["reasoning_content"] == "thinking hard"

    forged = dict(returned, encrypted_content=sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"))
    rejected = http.post("/v1/responses", json={"model": "fake/echo", "input": [forged, {"role": "user",
                                                                                        "content": "x"}]})
    assert rejected.status_code == 400
    assert rejected.json()["error"]["code"] == "invalid_encrypted_content"
    assert rejected.json()["error"]["param"] == "input[0].encrypted_content"


def test_logprobs_when_included(http: httpx.Client) -> None:
    request = {"model": "fake/echo", "input": "two words", "top_logprobs": 2,
               "include": ["message.output_text.logprobs"], "stream": True}
    with http.stream("POST", "/v1/responses", json=request) as reply:
        events, _ = sse_events(reply)
    final = check_stream(events)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(len(e["logprobs"]) == 1 and len(e["logprobs"][0]["top_logprobs"]) == 2 for e in deltas)
    part = final["output"][0]["content"][0]
    assert [lp["token"] for lp in part["logprobs"]] == [e["delta"] for e in deltas]
    without = http.post("/v1/responses", json={"model": "fake/echo", "input": "two words", "top_logprobs": 2}).json()
    assert without["output"][0]["content"][0]["logprobs"] == []


def test_incomplete_at_max_output_tokens(client: openai.OpenAI) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    response = client.responses.create(model="fake/echo", input=words, max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    events = list(client.responses.create(model="fake/echo", input=words, max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete"


def test_usage_and_cost(http: httpx.Client) -> None:
    usage = http.post("/v1/responses", json={"model": "fake/echo", "input": "one two three"}).json()["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert usage["cost"] == pytest.approx((usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6)
