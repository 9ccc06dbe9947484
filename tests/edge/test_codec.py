"""The codec: JSON -> proto -> JSON round-trips, spec-valid output for every shape, and clear decode errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from switchboard.edge import codec, sse
from switchboard.responses.v1 import events_pb2, response_pb2, responses_service_pb2
from switchboard.service.pipeline.engine import TurnEngine
from switchboard.service.providers.base import (
    Finish,
    ReasoningDelta,
    ReasoningSummaryDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from switchboard.shared.errors import UpstreamError
from tests import openapi, wire
from tests.streams import check_stream

Request = responses_service_pb2.CreateResponseRequest

REQUESTS: list[dict[str, Any]] = [
    {"model": "p/m", "input": "hello"},
    {"model": "p/m", "input": [{"type": "message", "role": "user", "content": "hi"}]},
    {"input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,AA"},
        ]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"x\":1}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}],
         "encrypted_content": "opaque"},
        {"type": "item_reference", "id": "msg_1"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ]},
    {"model": "p/m", "input": "x", "instructions": "sys", "metadata": {"k": "v"}, "temperature": 0.5, "top_p": 0.9,
     "max_output_tokens": 64, "max_tool_calls": 2, "parallel_tool_calls": False, "store": False, "stream": True,
     "include": ["reasoning.encrypted_content", "message.output_text.logprobs"], "top_logprobs": 3,
     "service_tier": "flex", "truncation": "auto", "previous_response_id": "resp_1", "user": "u",
     "safety_identifier": "s", "prompt_cache_key": "c", "session_id": "sess", "background": False,
     "presence_penalty": 0.1, "frequency_penalty": -0.1, "top_k": 40, "modalities": ["text"],
     "models": ["p/a", "q/b"]},
    {"input": "x", "tools": [
        {"type": "function", "name": "get", "description": "d", "parameters": {"type": "object", "properties": {}},
         "strict": True},
        {"type": "namespace", "name": "ns", "description": "group", "tools": [
            {"type": "function", "name": "inner", "description": None, "parameters": None, "strict": None}]},
        {"type": "web_search", "search_context_size": "low"},
    ], "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get"}]}},
    {"input": "x", "tool_choice": {"type": "function", "name": "get"}},
    {"input": "x", "tool_choice": "none"},
    {"input": "x", "text": {"format": {"type": "json_schema", "name": "n", "description": None,
                                       "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                                       "strict": True}, "verbosity": "low"}},
    {"input": "x", "text": {"format": {"type": "json_object"}}},
    {"input": "x", "reasoning": {"effort": "high", "summary": "auto"}},
    {"input": "x", "reasoning": {"effort": None, "summary": None, "max_tokens": 100, "enabled": True}},
    {"input": "x", "provider": {"order": ["a"], "allow_fallbacks": False,
                                "sort": {"by": "latency", "partition": "none"},
                                "max_price": {"prompt": 1.5, "completion": 2.0}, "data_collection": "deny",
                                "preferred_min_throughput": {"p50": 10.0},
                                "preferred_max_latency": 2.0,
                                "only": ["a"], "ignore": ["b"], "quantizations": ["fp8"], "zdr": True,
                                "require_parameters": True}},
    {"input": "x", "plugins": [{"id": "web", "max_results": 3}, {"id": "response-healing"}],
     "trace": {"trace_id": "t", "span_name": "s", "custom": "v"}, "prompt": {"id": "p", "variables": {"a": "b"}}},
    {"input": "x", "image_config": {"aspect_ratio": "16:9", "image_size": 1024}},
]


def _without_empty(value: Any) -> Any:
    """Drops empty lists and maps, which the encoder always emits and a client may leave out."""
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in ([], {})}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


@pytest.mark.parametrize("body", REQUESTS, ids=range(len(REQUESTS)))
def test_request_round_trips(body: dict[str, Any]) -> None:
    message = codec.decode(body, Request)
    encoded = _without_empty(codec.encode(message))
    # Input messages without `type`, and item references, gain their discriminator.
    assert encoded == _without_empty(_canonical(body)) | ({"input": encoded["input"]} if "input" in body else {})
    assert codec.decode(codec.encode(message), Request) == message


def test_inferred_discriminators() -> None:
    message = codec.decode({"input": [{"role": "user", "content": "hi"}, {"id": "msg_1"}]}, Request)
    items = message.input.items.items
    assert items[0].WhichOneof("item") == "message" and items[0].message.content.text == "hi"
    assert items[1].WhichOneof("item") == "item_reference" and items[1].item_reference.id == "msg_1"
    assert codec.encode(message)["input"] == [
        {"type": "message", "role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"}]


def test_unknown_top_level_fields_are_ignored() -> None:
    message = codec.decode({"input": "x", "client_metadata": {"a": 1}, "something_new": True}, Request)
    assert message.input.text == "x"


BAD: list[tuple[Any, str, str]] = [
    ({"temperature": "hot"}, "temperature", "expected a number"),
    ({"max_output_tokens": 1.5}, "max_output_tokens", "expected an integer"),
    ({"stream": "yes"}, "stream", "expected a boolean"),
    ({"input": 5}, "input", "got number"),
    ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, "input[0].role", "expected one of"),
    ({"input": [{"content": "x"}]}, "input[0].type", "Missing required parameter"),
    ({"input": [{"type": 7}]}, "input[0].type", "expected one of"),
    ({"input": [{"role": "user", "content": [{"type": "nope"}]}]}, "input[0].content[0].type", "expected one of"),
    ({"metadata": {"a": 1}}, "metadata.a", "expected a string"),
    ({"tools": {"type": "function"}}, "tools", "expected an array"),
    ({"tool_choice": "sometimes"}, "tool_choice", "expected one of 'auto', 'none', 'required'"),
    ({"provider": {"sortt": "price"}}, "provider.sortt", "Unknown parameter"),
    ({"provider": {"max_price": {"tokens": 1}}}, "provider.max_price.tokens", "Unknown parameter"),
    ({"include": ["everything"]}, "include[0]", "expected one of"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "expected one of"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "expected one of"),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD, ids=[b[1] for b in BAD])
def test_decode_errors_name_the_parameter(body: Any, param: str, message: str) -> None:
    with pytest.raises(codec.CodecError) as caught:
        codec.decode(body, Request)
    assert caught.value.param == param
    assert message in caught.value.message


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b"null", b"\xff"])
def test_loads_rejects_non_objects(body: bytes) -> None:
    with pytest.raises(codec.CodecError) as caught:
        codec.loads(body, Request)
    assert caught.value.param == ""


def _base_response() -> response_pb2.Response:
    response = response_pb2.Response(id="resp_1", object="response", created_at=1, model="p/m", status=1,
                                      truncation=response_pb2.TRUNCATION_DISABLED, parallel_tool_calls=True,
                                      top_p=1.0, temperature=1.0, service_tier=response_pb2.SERVICE_TIER_DEFAULT)
    response.text.format.text.SetInParent()
    response.tool_choice.mode = 1
    return response


SCENARIOS: dict[str, list[Any]] = {
    "text": [TextDelta("Hel"), TextDelta("lo"), UsageDelta(3, 2, 1, 0), Finish("stop")],
    "refusal": [RefusalDelta("I can"), RefusalDelta("not"), Finish("stop")],
    "reasoning_then_text": [ReasoningDelta("think"), ReasoningDelta("ing"), ReasoningSummaryDelta("sum"),
                            TextDelta("answer"), UsageDelta(5, 7, 0, 4), Finish("stop")],
    "parallel_tool_calls": [
        TextDelta("calling"),
        ToolCallDelta(0, "call_a", "get", ""), ToolCallDelta(0, arguments='{"x"'),
        ToolCallDelta(1, "call_b", "put", '{"y": 2}'), ToolCallDelta(0, arguments=": 1}"), Finish("tool_calls")],
    "incomplete": [TextDelta("cut "), TextDelta("off"), Finish("length")],
    "content_filter": [TextDelta("bad"), Finish("content_filter")],
    "empty": [Finish("stop")],
    "bad_tool_json": [ToolCallDelta(0, "call_a", "get", '{"x": '), Finish("tool_calls")],
    "unknown_finish": [TextDelta("odd"), Finish("unknown")],
    "call_without_arguments": [ToolCallDelta(0, "call_a", "ping"), Finish("tool_calls")],
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_engine_streams_are_valid_and_ordered(name: str) -> None:
    engine = TurnEngine(_base_response())
    events = engine.start()
    for delta in SCENARIOS[name]:
        events += engine.feed(delta)
    events += engine.finish()
    encoded = [codec.encode(e) for e in events]
    final = check_stream(encoded)
    assert codec.encode(engine.response) == final
    for event in encoded:
        assert codec.encode(codec.decode(event, events_pb2.StreamEvent)) == event
    if name == "incomplete":
        assert final["status"] == "incomplete"
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["output"][-1]["status"] == "incomplete"
        assert encoded[-1]["type"] == "response.incomplete"
    if name == "parallel_tool_calls":
        calls = [i for i in final["output"] if i["type"] == "function_call"]
        assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [
            ("call_a", "get", '{"x": 1}'), ("call_b", "put", '{"y": 2}')]
    if name == "bad_tool_json":
        assert final["status"] == "failed" and final["error"]["code"] == "server_error"
        assert encoded[-2]["type"] == "error" and encoded[-2]["code"] == "upstream_invalid_tool_arguments"
    if name == "unknown_finish":
        assert final["status"] == "failed" and encoded[-2]["code"] == "upstream_finish_reason"
    if name == "call_without_arguments":
        assert final["output"][0]["arguments"] == "{}"
    if name == "reasoning_then_text":
        assert final["output"][0]["type"] == "reasoning"
        assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "sum"}]
        assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
        assert [e["type"] for e in encoded if "reasoning_text" in e["type"]][-1] == "response.reasoning_text.done"
        assert final["output_text"] == "answer"


def test_failure_events_are_valid() -> None:
    engine = TurnEngine(_base_response())
    events = engine.start() + engine.feed(TextDelta("partial"))
    events += engine.fail(UpstreamError("upstream broke", code="upstream_stream_interrupted"))
    encoded = [codec.encode(e) for e in events]
    final = check_stream(encoded)
    assert encoded[-2]["type"] == "error"
    assert encoded[-2]["error"] == {"type": "server_error", "code": "upstream_stream_interrupted",
                                    "message": "upstream broke", "param": None, "headers": {}}
    # OpenAI's flat fields next to the Open Responses payload; the response's code is OpenAI's class.
    assert (encoded[-2]["code"], encoded[-2]["message"], encoded[-2]["param"]) == (
        "upstream_stream_interrupted", "upstream broke", None)
    assert final["status"] == "failed" and final["error"]["code"] == "server_error"


def test_every_event_type_is_covered() -> None:
    """The proto's event oneof mirrors the spec's 24 event types (plus OpenAI's MCP tool events, which the spec
    lacks), and each arm encodes to a valid event."""
    arms = events_pb2.StreamEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    tags = {codec._opt(f, codec.json_pb2.type_tag) for f in arms}
    renames = codec.open_responses_tags(events_pb2.StreamEvent.DESCRIPTOR)
    assert renames == wire.OPEN_RESPONSES_NAMES
    assert openapi.event_types() <= {renames.get(tag, tag) for tag in tags}
    assert tags <= set(wire._event_models()), "every event name is one openai-python knows"
    seen: set[str] = set()
    for scenario in [*SCENARIOS.values(), [TextDelta("x")]]:
        engine = TurnEngine(_base_response())
        events = engine.start()
        for delta in scenario:
            events += engine.feed(delta)
        events += engine.finish() if isinstance(scenario[-1], Finish) else engine.fail(UpstreamError("x"))
        seen |= {codec.encode(e)["type"] for e in events}
    # Emitted by the background worker, by annotations and by the MCP loop (tests/e2e/test_mcp.py), not by this
    # engine run.
    assert {t for t in tags - seen if not t.startswith("response.mcp_")} <= {
        "response.queued", "response.output_text.annotation.added"}
    queued = events_pb2.StreamEvent(sequence_number=0, response_queued=events_pb2.ResponseEvent(
        response=_base_response()))
    openapi.validate_event(codec.encode(queued))
    annotation = codec.decode({"type": "response.output_text.annotation.added", "sequence_number": 3,
                               "item_id": "msg_1", "output_index": 0, "content_index": 0, "annotation_index": 0,
                               "annotation": {"type": "url_citation", "url": "https://example.com", "start_index": 0,
                                              "end_index": 4, "title": "Example"}}, events_pb2.StreamEvent)
    openapi.validate_event(codec.encode(annotation))


@pytest.mark.parametrize("tag", ["response.reasoning_text.delta", "response.reasoning.delta"])
def test_both_spellings_of_a_renamed_event_decode(tag: str) -> None:
    event = codec.decode({"type": tag, "sequence_number": 4, "item_id": "rs_1", "output_index": 0,
                          "content_index": 0, "delta": "think"}, events_pb2.StreamEvent)
    assert event.WhichOneof("event") == "reasoning_delta" and event.reasoning_delta.delta == "think"
    assert codec.encode(event)["type"] == "response.reasoning_text.delta"  # OpenAI's spelling by default
    renamed = sse.encode_event(event, sse.OPEN_RESPONSES_NAMES)
    assert renamed["type"] == "response.reasoning.delta"
    assert sse.frame(event, sse.OPEN_RESPONSES_NAMES).startswith(b"event: response.reasoning.delta\n")


def test_int64_are_numbers_and_unset_nullables_are_null() -> None:
    response = _base_response()
    response.created_at = 2**40
    data = codec.encode(response)
    assert data["created_at"] == 2**40
    assert data["completed_at"] is None and data["error"] is None and data["usage"] is None
    assert "top_k" not in data
    openapi.validate_response(data)


def test_delta_event_fields_and_key_order() -> None:
    """A text delta is framed with its fields in the schema's order, its item id that of the open message, and
    consecutive sequence numbers, however many deltas one item gets."""
    engine = TurnEngine(response_pb2.Response(id="resp_1", object="response"))
    events = engine.start()
    for text in ("a", "b", "c"):
        events += engine.feed(TextDelta(text))
    deltas = [codec.encode(e) for e in events if e.WhichOneof("event") == "output_text_delta"]
    item_id = engine.response.output[0].message.id
    assert [list(d) for d in deltas] == [
        ["type", "sequence_number", "item_id", "output_index", "content_index", "delta", "logprobs"]] * 3
    assert [(d["item_id"], d["delta"], d["output_index"], d["content_index"]) for d in deltas] == [
        (item_id, "a", 0, 0), (item_id, "b", 0, 0), (item_id, "c", 0, 0)]
    numbers = [d["sequence_number"] for d in deltas]
    assert numbers == list(range(numbers[0], numbers[0] + 3))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert sse.frame(events[-1]) == b"event: response.output_text.delta\ndata: " + orjson.dumps(deltas[-1]) + b"\n\n"
