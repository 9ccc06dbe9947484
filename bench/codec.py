"""Micro-benchmark of codec.encode: a text delta stream event and a completed Response (µs per encode).

Usage: python -m bench.codec
"""

from __future__ import annotations

import timeit

import orjson

from switchboard.edge import codec
from switchboard.responses.v1 import events_pb2, response_pb2

DELTA = events_pb2.StreamEvent(sequence_number=5, output_text_delta=events_pb2.OutputTextDeltaEvent(
    item_id="msg_abc123", output_index=0, content_index=0, delta="abcd"))

RESPONSE = codec.decode({
    "id": "resp_abc123", "object": "response", "created_at": 1735689600, "completed_at": 1735689603,
    "status": "completed", "model": "openai/gpt-4o-mini", "instructions": "Be brief.",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Looked up the weather."}],
         "encrypted_content": "opaque"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\": \"Paris\"}", "status": "completed"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [
            {"type": "output_text", "text": "It is sunny in Paris today, 21 degrees.", "annotations": [
                {"type": "url_citation", "url": "https://example.com/paris", "start_index": 0, "end_index": 8,
                 "title": "Paris weather"}], "logprobs": []}]},
    ],
    "tools": [
        {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"type": "web_search", "search_context_size": "low"},
    ],
    "tool_choice": "auto", "truncation": "disabled", "parallel_tool_calls": True,
    "text": {"format": {"type": "text"}, "verbosity": "medium"}, "top_p": 1.0, "temperature": 0.7,
    "reasoning": {"effort": "low", "summary": "auto"},
    "usage": {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 42,
              "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 162},
    "max_output_tokens": 512, "store": True, "service_tier": "default", "metadata": {"user": "u_1", "trace": "t"},
    "output_text": "It is sunny in Paris today, 21 degrees.", "user": "u_1",
}, response_pb2.Response)


def per_call(fn: object, arg: object, number: int) -> float:
    best = min(timeit.repeat(lambda: fn(arg), number=number, repeat=7))  # type: ignore[operator]
    return best / number * 1e6


def main() -> None:
    codec.encode(DELTA), codec.encode(RESPONSE)
    print(f"delta event   {per_call(codec.encode, DELTA, 200_000):6.2f} µs  {orjson.dumps(codec.encode(DELTA))!r}")
    print(f"full response {per_call(codec.encode, RESPONSE, 20_000):6.2f} µs  {len(codec.dumps(RESPONSE))} bytes")


if __name__ == "__main__":
    main()
