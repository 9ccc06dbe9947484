"""The same client code against all three upstream kinds: Chat Completions, native Responses, Anthropic."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_http import sse_events
from tests.streams import check_stream

KINDS = ["fake", "responses", "anthropic"]
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}


@pytest.mark.parametrize("provider", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_agent_loop(client: openai.OpenAI, provider: str, stream: bool) -> None:
    model = f"{provider}/tool-call"
    if stream:
        events = list(client.responses.create(model=model, input="weather?", tools=[WEATHER], stream=True))
        assert "response.function_call_arguments.delta" in [e.type for e in events]
        # Tool arguments never leak into output text (a peer bug this gateway must not have).
        assert not any('"x"' in e.delta for e in events if e.type == "response.output_text.delta")
        first = events[-1].response  # type: ignore[union-attr]
    else:
        first = client.responses.create(model=model, input="weather?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"x": 1}
    second = client.responses.create(model=model, tools=[WEATHER], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
         "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    ])
    assert "tool said: sunny" in second.output_text


@pytest.mark.parametrize("provider", KINDS)
def test_text_reasoning_and_usage_stream(http: httpx.Client, provider: str) -> None:
    with http.stream("POST", "/v1/responses", json={"model": f"{provider}/reasoning", "input": "think about it",
                                                     "stream": True, "reasoning": {"effort": "low"}}) as reply:
        assert reply.status_code == 200
        events, _ = sse_events(reply)
    final = check_stream(events)
    kinds = [item["type"] for item in final["output"]]
    assert kinds[0] == "reasoning" and kinds[-1] == "message"
    assert "think about it" in final["output_text"]
    assert final["usage"]["input_tokens"] > 0 and final["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("provider", KINDS)
def test_max_tokens_is_incomplete(http: httpx.Client, provider: str) -> None:
    model = f"{provider}/echo" if provider == "fake" else f"{provider}/max-tokens"
    body = http.post("/v1/responses", json={"model": model, "input": " ".join(["word"] * 40),
                                            "max_output_tokens": 16}).json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("provider", ["responses", "anthropic"])
def test_upstream_failures_map_to_statuses(http: httpx.Client, provider: str) -> None:
    assert http.post("/v1/responses", json={"model": f"{provider}/fail-500", "input": "x"}).status_code == 502
    limited = http.post("/v1/responses", json={"model": f"{provider}/fail-429", "input": "x"})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("provider", ["anthropic", "responses"])
def test_upstream_reasoning_proof_survives_a_stateless_turn(http: httpx.Client, native_upstreams: dict[str, str],
                                                            provider: str) -> None:
    """Anthropic's thinking signature / a Responses upstream's encrypted_content travels sealed inside our
    encrypted_content and reaches the upstream again, unchanged, on the next turn."""
    first = http.post("/v1/responses", json={"model": f"{provider}/reasoning", "input": "think", "store": False,
                                              "include": ["reasoning.encrypted_content"],
                                              "reasoning": {"effort": "low"}}).json()
    reasoning = [item for item in first["output"] if item["type"] == "reasoning"]
    assert reasoning and reasoning[0]["encrypted_content"]
    marker = f"proof-{provider}-{time.monotonic_ns()}"
    follow = http.post("/v1/responses", json={"model": f"{provider}/echo", "store": False,
                                               "reasoning": {"effort": "low"}, "input": [
                                                   {"role": "user", "content": "think"}, *first["output"],
                                                   {"role": "user", "content": marker}]})
    assert follow.status_code == 200, follow.text
    url = native_upstreams["anthropic" if provider == "anthropic" else "openai_responses"]
    sent = [r for r in httpx.get(f"{url}/_requests").json() if marker in json.dumps(r)][-1]
    text = json.dumps(sent)
    assert reasoning[0]["encrypted_content"] not in text, "our sealed envelope never reaches the upstream"
    if provider == "anthropic":
        blocks = [b for m in sent["body"]["messages"] for b in (m["content"] if isinstance(m["content"], list)
                                                                 else []) if b.get("type") == "thinking"]
        assert blocks and blocks[0]["signature"]
    else:
        items = [i for i in sent["body"]["input"] if i.get("type") == "reasoning"]
        assert items and items[0]["encrypted_content"].startswith("gAAAA")
