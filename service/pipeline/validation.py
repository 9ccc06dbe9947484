"""Request validation: the rules of the Responses request that the JSON codec's types cannot express.

``validate`` is pure (no I/O, no config) and raises ``invalid(...)`` for the first violation, naming the
parameter the way OpenAI does (``metadata.<key>``, ``tools[2].name``, ``input[3].content[0].image_url``).
It complements what ``requests.prepare`` checks (model form and provider, item kinds, missing input)
and runs before it, so gRPC and HTTP callers get the same rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from google.protobuf import json_format
from jsonschema import exceptions as schema_exceptions  # type: ignore[import-untyped]
from jsonschema import validators as schema_validators

from switchboard.responses.v1 import content_pb2, responses_service_pb2, tools_pb2
from switchboard.shared.errors import invalid

Request = responses_service_pb2.CreateResponseRequest
MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The numeric bounds of the rules. Config may tighten them; the defaults are the spec's."""

    metadata_pairs: int = 16
    metadata_key_length: int = 64
    metadata_value_length: int = 512
    user_length: int = 256
    session_id_length: int = 256
    safety_identifier_length: int = 64
    prompt_cache_key_length: int = 64
    text_length: int = 10 * MiB  # every input text, instructions, arguments, encrypted content
    image_url_length: int = 20 * MiB
    file_data_length: int = 32 * MiB
    call_id_length: int = 64
    models: int = 8
    allowed_tools: int = 128
    temperature: tuple[float, float] = (0.0, 2.0)
    top_p: tuple[float, float] = (0.0, 1.0)
    top_logprobs: tuple[int, int] = (0, 20)
    penalty: tuple[float, float] = (-2.0, 2.0)
    max_output_tokens_min: int = 16
    max_tool_calls_min: int = 1
    top_k_min: int = 0
    reasoning_max_tokens_min: int = 1


DEFAULT_LIMITS = Limits()

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
PLUGINS = ("web", "file-parser", "response-healing", "context-compression", "moderation", "auto-router")
SORT_PARTITIONS = ("model", "none")
# `include` values that need a tool this gateway does not have: value -> (JSON name, tool).
_UNSUPPORTED_INCLUDES = {
    responses_service_pb2.INCLUDE_FILE_SEARCH_CALL_RESULTS: ("file_search_call.results", "file_search"),
    responses_service_pb2.INCLUDE_COMPUTER_CALL_OUTPUT_OUTPUT_IMAGE_URL: ("computer_call_output.output.image_url",
                                                                          "computer_use"),
    responses_service_pb2.INCLUDE_CODE_INTERPRETER_CALL_OUTPUTS: ("code_interpreter_call.outputs", "code_interpreter"),
}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def validate(request: Request, *, limits: Limits = DEFAULT_LIMITS, stream: bool | None = None) -> None:
    """Raises an INVALID_ARGUMENT ApiError for the first rule ``request`` breaks.

    ``stream`` is whether the call streams (gRPC callers choose the method); it defaults to ``request.stream``.
    """
    _models(request, limits)
    _input(request, limits)
    _metadata(request, limits)
    functions, types = _tools(request)
    _tool_choice(request, functions, types, limits)
    _text_format(request)
    _reasoning(request, limits)
    for name, low, high in _ranges(limits):
        if request.HasField(name):  # type: ignore[arg-type]
            _number(getattr(request, name), name, low, high)
    for name, length in _lengths(limits):
        if request.HasField(name):  # type: ignore[arg-type]
            _length(getattr(request, name), name, length)
    _output(request)
    if request.HasField("stream_options") and not (request.stream if stream is None else stream):
        _fail("stream_options", "'stream_options' is only allowed when 'stream' is true.")
    if request.background and request.HasField("store") and not request.store:
        _fail("background", "background mode needs a stored response, but 'store' is false.")
    _provider(request.provider)
    _plugins(request)
    _trace(request)
    _prompt(request)


# ---------------------------------------------------------------- tables


def _ranges(limits: Limits) -> tuple[tuple[str, float | None, float | None], ...]:
    """Top-level numbers and their bounds (None: unbounded)."""
    return (
        ("max_output_tokens", limits.max_output_tokens_min, None),
        ("temperature", *limits.temperature),
        ("top_p", *limits.top_p),
        ("top_logprobs", *limits.top_logprobs),
        ("max_tool_calls", limits.max_tool_calls_min, None),
        ("presence_penalty", *limits.penalty),
        ("frequency_penalty", *limits.penalty),
        ("top_k", limits.top_k_min, None),
    )


def _lengths(limits: Limits) -> tuple[tuple[str, int], ...]:
    return (
        ("instructions", limits.text_length),
        ("prompt_cache_key", limits.prompt_cache_key_length),
        ("safety_identifier", limits.safety_identifier_length),
        ("user", limits.user_length),
        ("session_id", limits.session_id_length),
    )


# ---------------------------------------------------------------- primitives


def _fail(param: str, detail: str, code: str = "invalid_value") -> NoReturn:
    raise invalid(f"Invalid '{param}': {detail}", param, code=code)


def _missing(param: str, hint: str = "") -> NoReturn:
    raise invalid(f"Missing required parameter: '{param}'{hint}.", param, code="missing_required_parameter")


def _key(key: str) -> str:  # a client's map key in a param, cut short: gRPC trailers are of bounded size
    return key if len(key) <= 100 else key[:100] + "..."


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _number(value: float, param: str, low: float | None, high: float | None) -> None:
    kind = "integer" if isinstance(value, int) else "decimal"
    if not math.isfinite(value):
        _fail(param, f"expected a finite number, but got {value}.")
    if low is not None and value < low:
        _fail(param, f"{kind} below minimum value. Expected a value >= {_show(low)}, but got {_show(value)} instead.",
              f"{kind}_below_min_value")
    if high is not None and value > high:
        _fail(param, f"{kind} above maximum value. Expected a value <= {_show(high)}, but got {_show(value)} instead.",
              f"{kind}_above_max_value")


def _length(value: str, param: str, limit: int, *, required: bool = False) -> None:
    if required and not value:
        _missing(param)
    if len(value) > limit:
        _fail(param, f"string too long. Expected a string with maximum length {limit}, but got a string with length "
              f"{len(value)} instead.", "string_above_max_length")


def _name(value: str, param: str) -> None:
    if not value:
        _missing(param)
    if not _NAME.fullmatch(value):
        _fail(param, f"string does not match pattern. Expected a string that matches the pattern '{NAME_PATTERN}', "
              f"but got {value[:80]!r}.")


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema (checked against its metaschema), or None."""
    declared = schema.get("$schema")
    try:
        if declared is None:
            cls = schema_validators.validator_for(schema)
        else:  # an unknown $schema: no default (jsonschema would warn and fall back to the latest draft)
            cls = schema_validators.validator_for(schema, default=None) if isinstance(declared, str) else None
            if cls is None:
                return f"'$schema' names no known JSON Schema draft: {str(declared)[:100]!r}"
        cls.check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)[:200]
        return str(exc.message)[:300] + (f" (at '{where}')" if where else "")
    except (ValueError, TypeError, LookupError, RecursionError) as exc:
        return f"the schema cannot be checked ({type(exc).__name__})"
    return None


# ---------------------------------------------------------------- fields


def _models(request: Request, limits: Limits) -> None:
    if len(request.models) > limits.models:
        _fail("models", f"array too long. Expected an array with maximum length {limits.models}, but got an array "
              f"with length {len(request.models)} instead.", "array_above_max_length")
    seen: set[str] = set()
    # Whether a name exists (a routed model, or `<provider>/<model>`) is the router's 404.
    for index, name in enumerate(request.models):
        if not name:
            _fail(f"models[{index}]", "model names may not be empty.", "empty_string")
        if name in seen:
            _fail(f"models[{index}]", f"model {name[:100]!r} is listed twice.", "duplicate_value")
        seen.add(name)


def _metadata(request: Request, limits: Limits) -> None:
    pairs = request.metadata
    if len(pairs) > limits.metadata_pairs:
        _fail("metadata", f"too many properties. Expected an object with at most {limits.metadata_pairs} properties, "
              f"but got an object with {len(pairs)} properties instead.", "object_above_max_properties")
    for key in sorted(pairs):
        if len(key) > limits.metadata_key_length:
            _fail("metadata", f"key too long. Expected keys of at most {limits.metadata_key_length} characters, but "
                  f"got a key of {len(key)} characters.", "string_above_max_length")
        if "[" in key or "]" in key:
            _fail("metadata", f"key {key!r} may not contain '[' or ']'.")
        _length(pairs[key], f"metadata.{key}", limits.metadata_value_length)


def _input(request: Request, limits: Limits) -> None:
    which = request.input.WhichOneof("value")
    if which == "text":
        _length(request.input.text, "input", limits.text_length)
    if which != "items":
        return
    for index, item in enumerate(request.input.items.items):
        param = f"input[{index}]"
        kind = item.WhichOneof("item")
        if kind == "message":
            _content(item.message.content, f"{param}.content", limits)
        elif kind == "function_call":
            call = item.function_call
            _length(call.call_id, f"{param}.call_id", limits.call_id_length, required=True)
            _length(call.arguments, f"{param}.arguments", limits.text_length)
            if call.arguments:  # the gateway's own output has "" for a call without arguments
                try:
                    orjson.loads(call.arguments)
                except orjson.JSONDecodeError as exc:
                    _fail(f"{param}.arguments", f"the arguments are not valid JSON ({exc}).")
        elif kind == "function_call_output":
            _length(item.function_call_output.call_id, f"{param}.call_id", limits.call_id_length, required=True)
            _content(item.function_call_output.output, f"{param}.output", limits)
        elif kind == "reasoning":
            _parts(item.reasoning.summary, f"{param}.summary", limits)
            _parts(item.reasoning.content, f"{param}.content", limits)
            _length(item.reasoning.encrypted_content, f"{param}.encrypted_content", limits.text_length)
        elif kind == "compaction":
            _length(item.compaction.encrypted_content, f"{param}.encrypted_content", limits.text_length)


def _content(content: content_pb2.Content, param: str, limits: Limits) -> None:
    which = content.WhichOneof("value")
    if which == "text":
        _length(content.text, param, limits.text_length)
    elif which == "parts":
        _parts(content.parts.parts, param, limits)


def _parts(parts: Iterable[content_pb2.ContentPart], param: str, limits: Limits) -> None:
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        kind = part.WhichOneof("part")
        if kind in _TEXT_PARTS:
            _length(getattr(part, str(kind)).text, f"{where}.text", limits.text_length)
        elif kind == "refusal":
            _length(part.refusal.refusal, f"{where}.refusal", limits.text_length)
        elif kind == "input_image":
            if not part.input_image.image_url and not part.input_image.file_id:
                _missing(f"{where}.image_url", " (an input_image needs 'image_url' or 'file_id')")
            _length(part.input_image.image_url, f"{where}.image_url", limits.image_url_length)
        elif kind == "input_file":
            file = part.input_file
            if not (file.file_data or file.file_url or file.file_id):
                _fail(where, "an input_file needs one of 'file_data', 'file_url' or 'file_id'.",
                      "missing_required_parameter")
            _length(file.file_data, f"{where}.file_data", limits.file_data_length)


def _tool_type(tool: tools_pb2.Tool | tools_pb2.ToolReference) -> str:
    if tool.WhichOneof("tool") == "other":
        value = tool.other.fields.get("type")
        return value.string_value if value is not None else ""
    return str(tool.WhichOneof("tool"))


def _tools(request: Request) -> tuple[set[str], set[str]]:
    """The function names (namespaced ones included) and the tool types of ``tools``."""
    functions: dict[str, str] = {}
    namespaces: set[str] = set()
    for index, tool in enumerate(request.tools):
        kind = tool.WhichOneof("tool")
        if kind == "function":
            _function(tool.function, f"tools[{index}]", functions)
        elif kind == "namespace":
            name = tool.namespace.name
            _name(name, f"tools[{index}].name")
            if name in namespaces:
                _fail(f"tools[{index}].name", f"the namespace {name!r} is declared twice.", "duplicate_value")
            namespaces.add(name)
            for inner_index, inner in enumerate(tool.namespace.tools):
                if inner.WhichOneof("tool") == "function":
                    _function(inner.function, f"tools[{index}].tools[{inner_index}]", functions)
    return set(functions), {_tool_type(tool) for tool in request.tools}


def _function(function: tools_pb2.FunctionTool, param: str, seen: dict[str, str]) -> None:
    name = function.name
    _name(name, f"{param}.name")
    if name in seen:
        _fail(f"{param}.name", f"the function name {name!r} is already used by '{seen[name]}'.", "duplicate_value")
    seen[name] = f"{param}.name"
    if function.HasField("parameters"):
        schema = json_format.MessageToDict(function.parameters)
        kind = schema.get("type", "object")
        problem = f"its type must be 'object', not {kind!r}" if kind != "object" else _schema_problem(schema)
        if problem is not None:
            raise invalid(f"Invalid schema for function {name!r}: {problem}.", f"{param}.parameters",
                          code="invalid_function_parameters")


def _tool_choice(request: Request, functions: set[str], types: set[str], limits: Limits) -> None:
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "mode" and choice.mode == tools_pb2.TOOL_CHOICE_MODE_REQUIRED and not request.tools:
        _fail("tool_choice", "'required' needs at least one tool in 'tools'.")
    if which == "function" and choice.function.name not in functions:
        _fail("tool_choice", f"the function {choice.function.name[:100]!r} is not in 'tools'.")
    if which != "allowed_tools":
        return
    allowed = choice.allowed_tools
    if allowed.mode == tools_pb2.TOOL_CHOICE_MODE_UNSPECIFIED:
        _missing("tool_choice.mode")
    if allowed.mode == tools_pb2.TOOL_CHOICE_MODE_NONE:
        _fail("tool_choice.mode", "expected 'auto' or 'required', got 'none'.")
    if len(allowed.tools) > limits.allowed_tools:
        _fail("tool_choice.tools", f"array too long. Expected an array with maximum length {limits.allowed_tools}, "
              f"but got an array with length {len(allowed.tools)} instead.", "array_above_max_length")
    for index, ref in enumerate(allowed.tools):
        if ref.WhichOneof("tool") == "function":
            if ref.function.name not in functions:
                _fail(f"tool_choice.tools[{index}]", f"the function {ref.function.name[:100]!r} is not in 'tools'.")
        elif _tool_type(ref) not in types:
            _fail(f"tool_choice.tools[{index}]", f"no tool of type {_tool_type(ref)[:100]!r} is in 'tools'.")


def _text_format(request: Request) -> None:
    if request.text.format.WhichOneof("format") != "json_schema":
        return
    fmt = request.text.format.json_schema
    _name(fmt.name, "text.format.name")
    if not fmt.HasField("schema"):
        _missing("text.format.schema")
    problem = _schema_problem(json_format.MessageToDict(fmt.schema))
    if problem is not None:
        _fail("text.format.schema", f"not a valid JSON Schema: {problem}.", "invalid_json_schema")


def _reasoning(request: Request, limits: Limits) -> None:
    reasoning = request.reasoning
    if reasoning.HasField("effort") and reasoning.HasField("max_tokens"):
        _fail("reasoning", "give 'effort' or 'max_tokens', not both.")
    if reasoning.HasField("max_tokens"):
        _number(reasoning.max_tokens, "reasoning.max_tokens", limits.reasoning_max_tokens_min, None)


def _output(request: Request) -> None:
    for index, value in enumerate(request.include):
        if value in _UNSUPPORTED_INCLUDES:
            name, tool = _UNSUPPORTED_INCLUDES[value]
            _fail(f"include[{index}]", f"{name!r} cannot be honoured, this gateway has no {tool} tool.",
                  "unsupported_value")
        if value == responses_service_pb2.INCLUDE_UNSPECIFIED:
            _fail(f"include[{index}]", "no value.")
    for index, modality in enumerate(request.modalities):
        if modality == responses_service_pb2.MODALITY_UNSPECIFIED:
            _fail(f"modalities[{index}]", "expected 'text' or 'image'.")
    config = request.image_config.fields
    if config and responses_service_pb2.MODALITY_IMAGE not in request.modalities:
        _fail("image_config", "it applies only when 'modalities' includes 'image'.")
    for key in sorted(config):
        kind = config[key].WhichOneof("kind")
        if kind not in ("string_value", "number_value") or not math.isfinite(config[key].number_value):
            _fail(f"image_config.{_key(key)}", "expected a string or a number.")


def _provider(provider: responses_service_pb2.ProviderPreferences) -> None:
    for name in ("order", "only", "ignore", "quantizations"):
        for index, entry in enumerate(getattr(provider, name)):
            if not entry.strip():
                _fail(f"provider.{name}[{index}]", "empty string. Expected a non-empty string.", "empty_string")
    for name in ("prompt", "completion", "request", "image"):
        if provider.max_price.HasField(name):  # type: ignore[arg-type]
            _number(getattr(provider.max_price, name), f"provider.max_price.{name}", 0, None)
    for name in ("preferred_min_throughput", "preferred_max_latency"):
        value: responses_service_pb2.PercentileValue = getattr(provider, name)
        if value.WhichOneof("value") == "number":
            _number(value.number, f"provider.{name}", 0, None)
        for percentile in ("p50", "p75", "p90", "p99"):
            if value.percentiles.HasField(percentile):
                _number(getattr(value.percentiles, percentile), f"provider.{name}.{percentile}", 0, None)
    if provider.sort.WhichOneof("value") == "options":
        options = provider.sort.options
        if options.by == responses_service_pb2.PROVIDER_SORT_BY_UNSPECIFIED:
            _missing("provider.sort.by")
        if options.HasField("partition") and options.partition not in SORT_PARTITIONS:
            _fail("provider.sort.partition", f"expected 'model' or 'none', got {options.partition[:100]!r}.")


def _plugins(request: Request) -> None:
    seen: set[str] = set()
    for index, plugin in enumerate(request.plugins):
        if plugin.id not in PLUGINS:
            _fail(f"plugins[{index}].id", f"unknown plugin {plugin.id[:100]!r}. Known plugins: {', '.join(PLUGINS)}.")
        if plugin.id in seen:
            _fail(f"plugins[{index}].id", f"the plugin {plugin.id!r} is listed twice.", "duplicate_value")
        seen.add(plugin.id)


def _trace(request: Request) -> None:
    attributes = request.trace.attributes.fields
    for key in sorted(attributes):
        kind = attributes[key].WhichOneof("kind")
        if kind in ("struct_value", "list_value"):
            shape = "an object" if kind == "struct_value" else "an array"
            _fail(f"trace.{_key(key)}", f"custom trace keys take a string, number or boolean, but got {shape}.")


_VARIABLE_PARTS = ("input_text", "input_image", "input_file")


def _prompt(request: Request) -> None:
    """As OpenAI: a prompt variable is a string or an input_text, input_image or input_file part."""
    variables = request.prompt.variables.fields
    for key in sorted(variables):
        value = variables[key]
        kind = value.WhichOneof("kind")
        param = f"prompt.variables.{_key(key)}"
        if kind == "string_value":
            continue
        part = value.struct_value.fields if kind == "struct_value" else None
        tag = part["type"].string_value if part is not None and "type" in part else ""
        if tag not in _VARIABLE_PARTS:
            _fail(param, "a prompt variable is a string or an object of type 'input_text', 'input_image' or "
                         "'input_file'.", code="invalid_type")
        if tag == "input_text" and (part is None or part["text"].WhichOneof("kind") != "string_value"):
            _missing(f"{param}.text")


__all__ = ["DEFAULT_LIMITS", "Limits", "validate"]
