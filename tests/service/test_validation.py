"""pipeline.validation, table-driven: one row per rule (a bad value -> param, code, message), plus valid edge values.

The same tables run end to end over HTTP and gRPC in tests/e2e/test_validation_e2e.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from switchboard.edge import codec
from switchboard.responses.v1 import responses_service_pb2
from switchboard.service.pipeline.validation import DEFAULT_LIMITS, Limits, validate
from switchboard.shared.errors import ApiError

Request = responses_service_pb2.CreateResponseRequest
BASE: dict[str, Any] = {"model": "fake/echo", "input": "hi"}


@dataclass(frozen=True)
class Case:
    id: str
    body: dict[str, Any]  # merged over BASE
    param: str
    code: str
    message: str  # a substring of the error message

    @property
    def big(self) -> bool:
        """Larger than Envoy's 4 MiB body limit (Envoy answers 413 before the service sees it)."""
        return any(isinstance(v, str) and len(v) > 4 * 1024 * 1024 for v in _strings(self.body))

    def request(self) -> Request:
        return codec.decode({**BASE, **self.body}, Request)


def _strings(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value]


def fn(name: str = "f", **extra: Any) -> dict[str, Any]:
    return {"type": "function", "name": name, **extra}


def items(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}
BIG = 10 * 1024 * 1024 + 1

CASES = [
    Case("prompt-variable-null", {"prompt": {"id": "p", "variables": {"x": None}}}, "prompt.variables.x",
         "invalid_type", "a prompt variable is a string or an object"),
    Case("prompt-variable-number", {"prompt": {"id": "p", "variables": {"x": 3}}}, "prompt.variables.x",
         "invalid_type", "'input_text', 'input_image' or 'input_file'"),
    Case("prompt-variable-text-without-text", {"prompt": {"id": "p", "variables": {"x": {"type": "input_text"}}}},
         "prompt.variables.x.text", "missing_required_parameter", "Missing required parameter"),
    Case("metadata-pairs", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata",
         "object_above_max_properties", "at most 16 properties"),
    Case("metadata-key-length", {"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length",
         "at most 64 characters"),
    Case("metadata-key-brackets", {"metadata": {"a[0]": "v"}}, "metadata", "invalid_value", "'[' or ']'"),
    Case("metadata-value-length", {"metadata": {"key": "v" * 513}}, "metadata.key", "string_above_max_length",
         "maximum length 512"),
    Case("user-length", {"user": "u" * 257}, "user", "string_above_max_length", "maximum length 256"),
    Case("session-id-length", {"session_id": "s" * 257}, "session_id", "string_above_max_length",
         "maximum length 256"),
    Case("safety-identifier-length", {"safety_identifier": "s" * 65}, "safety_identifier",
         "string_above_max_length", "maximum length 64"),
    Case("prompt-cache-key-length", {"prompt_cache_key": "p" * 65}, "prompt_cache_key", "string_above_max_length",
         "maximum length 64"),
    Case("temperature-high", {"temperature": 2.01}, "temperature", "decimal_above_max_value", "<= 2"),
    Case("temperature-low", {"temperature": -0.1}, "temperature", "decimal_below_min_value", ">= 0"),
    Case("top-p-high", {"top_p": 1.5}, "top_p", "decimal_above_max_value", "<= 1"),
    Case("top-p-low", {"top_p": -1}, "top_p", "decimal_below_min_value", ">= 0"),
    Case("top-logprobs-high", {"top_logprobs": 21}, "top_logprobs", "integer_above_max_value", "<= 20"),
    Case("top-logprobs-low", {"top_logprobs": -1}, "top_logprobs", "integer_below_min_value", ">= 0"),
    Case("max-tool-calls", {"max_tool_calls": 0}, "max_tool_calls", "integer_below_min_value", ">= 1"),
    Case("max-output-tokens", {"max_output_tokens": 15}, "max_output_tokens", "integer_below_min_value", ">= 16"),
    Case("presence-penalty", {"presence_penalty": 2.5}, "presence_penalty", "decimal_above_max_value", "<= 2"),
    Case("frequency-penalty", {"frequency_penalty": -2.5}, "frequency_penalty", "decimal_below_min_value",
         ">= -2"),
    Case("top-k", {"top_k": -1}, "top_k", "integer_below_min_value", ">= 0"),
    Case("reasoning-exclusive", {"reasoning": {"effort": "low", "max_tokens": 100}}, "reasoning", "invalid_value",
         "not both"),
    Case("reasoning-max-tokens", {"reasoning": {"max_tokens": 0}}, "reasoning.max_tokens",
         "integer_below_min_value", ">= 1"),
    Case("function-name-pattern", {"tools": [fn("get weather")]}, "tools[0].name", "invalid_value",
         "does not match pattern"),
    Case("function-name-length", {"tools": [fn("f" * 65)]}, "tools[0].name", "invalid_value",
         "does not match pattern"),
    Case("function-name-missing", {"tools": [fn("")]}, "tools[0].name", "missing_required_parameter",
         "Missing required parameter"),
    Case("function-name-duplicate", {"tools": [fn("f"), fn("g"), fn("f")]}, "tools[2].name", "duplicate_value",
         "already used by 'tools[0].name'"),
    Case("namespace-function-duplicate",
         {"tools": [fn("f"), {"type": "namespace", "name": "ns", "tools": [fn("g"), fn("f")]}]},
         "tools[1].tools[1].name", "duplicate_value", "already used"),
    Case("namespace-function-name", {"tools": [{"type": "namespace", "name": "ns", "tools": [fn("a.b")]}]},
         "tools[0].tools[0].name", "invalid_value", "does not match pattern"),
    Case("function-parameters-type", {"tools": [fn(parameters={"type": "string"})]}, "tools[0].parameters",
         "invalid_function_parameters", "must be 'object'"),
    Case("function-parameters-schema", {"tools": [fn(parameters={"type": "object", "properties": {"a": 5}})]},
         "tools[0].parameters", "invalid_function_parameters", "Invalid schema for function 'f'"),
    Case("function-parameters-schema-keyword", {"tools": [fn(parameters={"type": "object", "required": "a"})]},
         "tools[0].parameters", "invalid_function_parameters", "is not of type 'array'"),
    Case("json-schema-name-missing", {"text": {"format": {"type": "json_schema", "schema": SCHEMA}}},
         "text.format.name", "missing_required_parameter", "Missing required parameter"),
    Case("json-schema-name-pattern", {"text": {"format": {"type": "json_schema", "name": "a b", "schema": SCHEMA}}},
         "text.format.name", "invalid_value", "does not match pattern"),
    Case("json-schema-schema-missing", {"text": {"format": {"type": "json_schema", "name": "out"}}},
         "text.format.schema", "missing_required_parameter", "Missing required parameter"),
    Case("json-schema-schema-invalid",
         {"text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "nope"}}}},
         "text.format.schema", "invalid_json_schema", "not a valid JSON Schema"),
    Case("json-schema-unknown-draft",
         {"text": {"format": {"type": "json_schema", "name": "out", "schema": {"$schema": "https://x.test/s"}}}},
         "text.format.schema", "invalid_json_schema", "no known JSON Schema draft"),
    Case("tool-choice-unknown-function", {"tools": [fn("f")], "tool_choice": {"type": "function", "name": "g"}},
         "tool_choice", "invalid_value", "'g' is not in 'tools'"),
    Case("tool-choice-required-no-tools", {"tool_choice": "required"}, "tool_choice", "invalid_value",
         "needs at least one tool"),
    Case("allowed-tools-unknown-function",
         {"tools": [fn("f")], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                              "tools": [{"type": "function", "name": "f"},
                                                        {"type": "function", "name": "g"}]}},
         "tool_choice.tools[1]", "invalid_value", "'g' is not in 'tools'"),
    Case("allowed-tools-unknown-type",
         {"tools": [fn("f")], "tool_choice": {"type": "allowed_tools", "mode": "required",
                                              "tools": [{"type": "web_search"}]}},
         "tool_choice.tools[0]", "invalid_value", "no tool of type 'web_search'"),
    Case("allowed-tools-mode-none",
         {"tools": [fn("f")], "tool_choice": {"type": "allowed_tools", "mode": "none",
                                              "tools": [{"type": "function", "name": "f"}]}},
         "tool_choice.mode", "invalid_value", "'auto' or 'required'"),
    Case("models-empty", {"models": ["fake/echo", ""]}, "models[1]", "empty_string", "may not be empty"),
    Case("models-too-many", {"models": [f"fake/m{i}" for i in range(9)]}, "models", "array_above_max_length",
         "maximum length 8"),
    Case("models-duplicate", {"models": ["fake/a", "fake/b", "fake/a"]}, "models[2]", "duplicate_value",
         "listed twice"),
    Case("include-file-search", {"include": ["reasoning.encrypted_content", "file_search_call.results"]},
         "include[1]", "unsupported_value", "no file_search tool"),
    Case("include-computer", {"include": ["computer_call_output.output.image_url"]}, "include[0]",
         "unsupported_value", "cannot be honoured"),
    Case("include-code-interpreter", {"include": ["code_interpreter_call.outputs"]}, "include[0]",
         "unsupported_value", "no code_interpreter tool"),
    Case("image-config-without-image", {"image_config": {"aspect_ratio": "16:9"}}, "image_config", "invalid_value",
         "'modalities' includes 'image'"),
    Case("image-config-value", {"modalities": ["image"], "image_config": {"size": {"w": 1}}}, "image_config.size",
         "invalid_value", "a string or a number"),
    Case("stream-options-without-stream", {"stream_options": {"include_obfuscation": False}}, "stream_options",
         "invalid_value", "only allowed when 'stream' is true"),
    Case("background-without-store", {"background": True, "store": False}, "background", "invalid_value",
         "'store' is false"),
    Case("call-id-empty", {"input": [{"type": "function_call_output", "call_id": "", "output": "x"}]},
         "input[0].call_id", "missing_required_parameter", "Missing required parameter"),
    Case("call-id-length", {"input": [{"type": "function_call_output", "call_id": "c" * 65, "output": "x"}]},
         "input[0].call_id", "string_above_max_length", "maximum length 64"),
    Case("function-call-call-id", {"input": [{"type": "function_call", "call_id": "", "name": "f",
                                              "arguments": "{}"}]},
         "input[0].call_id", "missing_required_parameter", "Missing required parameter"),
    Case("function-call-arguments", {"input": [{"role": "user", "content": "q"},
                                               {"type": "function_call", "call_id": "c1", "name": "f",
                                                "arguments": "{not json"}]},
         "input[1].arguments", "invalid_value", "not valid JSON"),
    Case("input-image-source", {"input": [{"role": "user", "content": "x"},
                                          {"role": "user", "content": [{"type": "input_text", "text": "see"},
                                                                       {"type": "input_image", "detail": "low"}]}]},
         "input[1].content[1].image_url", "missing_required_parameter", "'image_url' or 'file_id'"),
    Case("input-file-source", {"input": items({"type": "input_file", "filename": "a.pdf"})},
         "input[0].content[0]", "missing_required_parameter", "'file_data', 'file_url' or 'file_id'"),
    Case("function-output-image-source",
         {"input": [{"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_image"}]}]},
         "input[0].output[0].image_url", "missing_required_parameter", "'image_url' or 'file_id'"),
    Case("input-text-size", {"input": "x" * BIG}, "input", "string_above_max_length", "maximum length 10485760"),
    Case("input-part-text-size", {"input": items({"type": "input_text", "text": "x" * BIG})},
         "input[0].content[0].text", "string_above_max_length", "maximum length 10485760"),
    Case("instructions-size", {"instructions": "x" * BIG}, "instructions", "string_above_max_length",
         "maximum length 10485760"),
    Case("provider-order-empty", {"provider": {"order": ["fake", ""]}}, "provider.order[1]", "empty_string",
         "empty string"),
    Case("provider-only-empty", {"provider": {"only": [" "]}}, "provider.only[0]", "empty_string", "empty string"),
    Case("provider-ignore-empty", {"provider": {"ignore": [""]}}, "provider.ignore[0]", "empty_string",
         "empty string"),
    Case("provider-max-price", {"provider": {"max_price": {"prompt": 1, "completion": -0.5}}},
         "provider.max_price.completion", "decimal_below_min_value", ">= 0"),
    Case("provider-min-throughput", {"provider": {"preferred_min_throughput": -1}},
         "provider.preferred_min_throughput", "decimal_below_min_value", ">= 0"),
    Case("provider-max-latency-percentile", {"provider": {"preferred_max_latency": {"p50": 1, "p90": -2}}},
         "provider.preferred_max_latency.p90", "decimal_below_min_value", ">= 0"),
    Case("provider-sort-partition", {"provider": {"sort": {"by": "price", "partition": "region"}}},
         "provider.sort.partition", "invalid_value", "'model' or 'none'"),
    Case("plugin-unknown", {"plugins": [{"id": "response-healing"}, {"id": "telepathy"}]}, "plugins[1].id",
         "invalid_value", "unknown plugin 'telepathy'"),
    Case("plugin-duplicate", {"plugins": [{"id": "moderation"}, {"id": "moderation"}]}, "plugins[1].id",
         "duplicate_value", "listed twice"),
    Case("trace-custom-object", {"trace": {"trace_id": "t1", "team": {"name": "x"}}}, "trace.team",
         "invalid_value", "string, number or boolean"),
    Case("trace-custom-array", {"trace": {"tags": ["a"]}}, "trace.tags", "invalid_value", "an array"),
]

# Values that JSON cannot carry (NaN, infinity, unset enums): gRPC callers only.
PROTO_CASES = [
    Case("temperature-nan", {"temperature": math.nan}, "temperature", "invalid_value", "finite number"),
    Case("top-p-inf", {"top_p": math.inf}, "top_p", "invalid_value", "finite number"),
    Case("penalty-inf", {"presence_penalty": -math.inf}, "presence_penalty", "invalid_value", "finite number"),
    Case("modality-unset", {"modalities": [0]}, "modalities[0]", "invalid_value", "'text' or 'image'"),
    Case("include-unset", {"include": [0]}, "include[0]", "invalid_value", "no value"),
]


def proto_request(case: Case) -> Request:
    request = Request(model="fake/echo", input=responses_service_pb2.Input(text="hi"))
    for name, value in case.body.items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


@dataclass(frozen=True)
class Valid:
    id: str
    body: dict[str, Any]
    served: bool = True  # the session stack answers it with 200 (fake/echo)


VALID = [
    Valid("bounds", {
        "metadata": {("k" * 62 + f"{i:02}"): "v" * 512 for i in range(16)},
        "user": "u" * 256, "session_id": "s" * 256, "safety_identifier": "s" * 64, "prompt_cache_key": "p" * 64,
        "temperature": 2, "top_p": 0, "top_logprobs": 20, "max_tool_calls": 1, "max_output_tokens": 16,
        "presence_penalty": -2, "frequency_penalty": 2, "top_k": 0,
    }),
    Valid("low-bounds", {"temperature": 0, "top_p": 1, "top_logprobs": 0, "presence_penalty": 2,
                         "frequency_penalty": -2, "metadata": {}, "models": [f"fake/m{i}" for i in range(8)]}),
    Valid("reasoning", {"reasoning": {"effort": "low", "summary": "auto"}}),
    Valid("reasoning-budget", {"reasoning": {"max_tokens": 1, "enabled": True}}),
    Valid("tools", {
        "tools": [fn("get_weather-2", parameters=SCHEMA, strict=True), fn("f" * 64),
                  {"type": "namespace", "name": "ns", "tools": [fn("inner", parameters={"properties": {}})]}],
        "tool_choice": {"type": "function", "name": "inner"},
    }),
    Valid("tool-choice-required", {"tools": [fn("f")], "tool_choice": "required"}),
    Valid("allowed-tools", {"tools": [fn("f"), fn("g")], "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]}}),
    Valid("json-schema", {"text": {"format": {"type": "json_schema", "name": "out-1", "strict": True,
                                              "schema": {"$schema": "http://json-schema.org/draft-07/schema#",
                                                         **SCHEMA}}}}),
    Valid("include", {"include": ["reasoning.encrypted_content", "message.output_text.logprobs",
                                  "message.input_image.image_url"]}),
    Valid("image-output", {"modalities": ["text", "image"], "image_config": {"aspect_ratio": "1:1", "n": 2}},
          served=False),
    Valid("enums", {"service_tier": "flex", "truncation": "auto", "store": True}),
    Valid("stream-options", {"stream": True, "stream_options": {"include_obfuscation": True}}),
    Valid("items", {"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "high"},
                                     {"type": "input_image", "file_id": "file_1"},
                                     {"type": "input_file", "file_url": "https://x.test/a.pdf"},
                                     {"type": "input_file", "file_data": "data:application/pdf;base64,AA=="}]},
        {"type": "function_call", "call_id": "c" * 64, "name": "f", "arguments": "{\"a\": [1]}"},
        {"type": "function_call_output", "call_id": "c" * 64, "output": "ok"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": ""},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"},
    ]}, served=False),
    Valid("provider", {"provider": {"order": ["fake"], "only": ["fake"], "ignore": ["other"],
                                    "max_price": {"prompt": 0, "completion": 1.5},
                                    "preferred_min_throughput": {"p50": 0}, "preferred_max_latency": 0,
                                    "sort": {"by": "latency", "partition": "none"}}}, served=False),
    Valid("plugins", {"plugins": [{"id": p} for p in ("file-parser", "response-healing", "context-compression",
                                                      "moderation", "auto-router")]}, served=False),
    Valid("trace", {"trace": {"trace_id": "t", "span_name": "s", "team": "a", "n": 1, "ok": True, "z": None}}),
    Valid("background", {"background": True, "store": True}, served=False),
]


def error_of(request: Request) -> ApiError:
    with pytest.raises(ApiError) as caught:
        validate(request)
    return caught.value


def check(error: ApiError, case: Case) -> None:
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.param, error.code) == (case.param, case.code), error.message
    assert case.message in error.message
    assert error.error_type == "invalid_request_error"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case) -> None:
    check(error_of(case.request()), case)


@pytest.mark.parametrize("case", PROTO_CASES, ids=[c.id for c in PROTO_CASES])
def test_proto_only_rule(case: Case) -> None:
    check(error_of(proto_request(case)), case)


@pytest.mark.parametrize("valid", VALID, ids=[v.id for v in VALID])
def test_valid_edge_values(valid: Valid) -> None:
    validate(codec.decode({**BASE, **valid.body}, Request))


def test_cases_are_unique_and_cover_the_rules() -> None:
    assert len({c.id for c in CASES + PROTO_CASES}) == len(CASES) + len(PROTO_CASES)
    assert len(CASES) >= 60


def test_stream_flag_overrides_the_request_field() -> None:
    request = codec.decode({**BASE, "stream_options": {"include_obfuscation": True}}, Request)
    validate(request, stream=True)
    with pytest.raises(ApiError):
        validate(request, stream=False)


def test_limits_can_be_tightened() -> None:
    tight = Limits(user_length=8, temperature=(0.0, 1.0), models=1)
    request = codec.decode({**BASE, "user": "u" * 9}, Request)
    validate(request)
    with pytest.raises(ApiError) as caught:
        validate(request, limits=tight)
    assert caught.value.param == "user" and "maximum length 8" in caught.value.message
    with pytest.raises(ApiError) as hot:
        validate(codec.decode({**BASE, "temperature": 1.5}, Request), limits=tight)
    assert hot.value.code == "decimal_above_max_value" and "<= 1" in hot.value.message
    assert DEFAULT_LIMITS.metadata_pairs == 16 and DEFAULT_LIMITS.text_length == 10 * 1024 * 1024


def test_a_schema_that_breaks_the_checker_is_a_400() -> None:
    for schema in ({"$schema": 5}, {"$schema": "http://["}, {"type": "object", "pattern": "("}):
        request = codec.decode({**BASE, "tools": [fn(parameters=schema)]}, Request)
        assert error_of(request).code == "invalid_function_parameters"


LONG = "x" * 20_000


@pytest.mark.parametrize("body", [
    {"trace": {LONG: {"a": 1}}},
    {"modalities": ["image"], "image_config": {LONG: [1]}},
    {"models": [LONG, "x", LONG]},
    {"models": ["a/" + LONG, "a/" + LONG]},
    {"plugins": [{"id": LONG}]},
    {"tools": [fn(LONG)]},
    {"tools": [fn("f")], "tool_choice": {"type": "function", "name": LONG}},
    {"text": {"format": {"type": "json_schema", "name": LONG, "schema": SCHEMA}}},
    {"text": {"format": {"type": "json_schema", "name": "n", "schema": {"$schema": LONG}}}},
    {"tools": [fn(parameters={"type": "object", "properties": {LONG: {"type": LONG}}})]},
    {"provider": {"sort": {"by": "price", "partition": LONG}}},
    {"metadata": {LONG: "v"}},
], ids=lambda body: next(iter(body)))
def test_error_text_stays_short(body: dict[str, Any]) -> None:
    """Client text is cut short in messages and params: gRPC carries them in trailers of bounded size."""
    error = error_of(codec.decode({**BASE, **body}, Request))
    assert len(error.message) + len(error.param or "") < 1500, error.message[:200]
