"""From a CreateResponseRequest to what the engine and a provider need: the initial Response snapshot
(with the echo of the request parameters) and the provider Turn (the conversation, resolved)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import orjson

from service.config import Config
from service.crypto import Sealer
from service.engine import EngineOptions, new_id
from service.errors import ApiError, invalid
from service.providers.base import Turn
from switchboard.responses.v1 import (
    content_pb2,
    items_pb2,
    response_pb2,
    responses_service_pb2,
    tools_pb2,
)

Request = responses_service_pb2.CreateResponseRequest

# Input item kinds a provider can take. Everything else needs the store (item_reference) or is unknown.
_INPUT_KINDS = {"message", "function_call", "function_call_output", "reasoning"}


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model: str

    @property
    def full(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Prepared:
    turn: Turn
    response: response_pb2.Response
    model: ModelRef
    omitted_tools: tuple[str, ...]
    options: EngineOptions = field(default_factory=EngineOptions)


REASONING_PURPOSE = "reasoning.v1"
# Namespaced tools reach the upstream as plain functions named <namespace>__<name>.
NAMESPACE_SEPARATOR = "__"


@dataclass(frozen=True)
class ToolPlan:
    functions: list[tools_pb2.FunctionTool]
    choice: tools_pb2.ToolChoice | None
    allowed: frozenset[str]
    names: dict[str, tuple[str, str]]
    omitted: tuple[str, ...]


def resolve_model(name: str, config: Config, param: str = "model") -> ModelRef:
    provider, sep, model = name.partition("/")
    if not sep or not provider or not model:
        raise invalid(f"Model {name!r} must be named '<provider>/<model>'.", param, code="invalid_model")
    if config.provider(provider) is None:
        raise ApiError(
            grpc.StatusCode.NOT_FOUND,
            "model_not_found",
            f"The model {name!r} does not exist: no provider named {provider!r} is configured.",
            param=param,
        )
    return ModelRef(provider, model)


def _tool_type(tool: tools_pb2.Tool) -> str:
    kind = tool.WhichOneof("tool")
    if kind == "other":
        value = tool.other.fields.get("type")
        return value.string_value if value is not None else "unknown"
    return str(kind)


def plan_tools(request: Request, config: Config) -> ToolPlan:
    """The functions the upstream sees, the tool choice it gets, and the calls the engine may return."""
    functions: list[tools_pb2.FunctionTool] = []
    names: dict[str, tuple[str, str]] = {}
    omitted: list[str] = []
    for index, tool in enumerate(request.tools):
        kind = tool.WhichOneof("tool")
        if kind == "function":
            functions.append(tool.function)
        elif kind == "namespace":
            for inner_index, inner in enumerate(tool.namespace.tools):
                if inner.WhichOneof("tool") != "function":
                    raise invalid("Namespace tools may contain only function tools.",
                                  f"tools[{index}].tools[{inner_index}]")
                flat = tools_pb2.FunctionTool()
                flat.CopyFrom(inner.function)
                flat.name = f"{tool.namespace.name}{NAMESPACE_SEPARATOR}{inner.function.name}"
                if tool.namespace.description and not flat.description:
                    flat.description = tool.namespace.description
                names[flat.name] = (tool.namespace.name, inner.function.name)
                functions.append(flat)
        elif config.unsupported_tools == "reject":
            raise invalid(
                f"Tool type {_tool_type(tool)!r} is not supported by this gateway.", f"tools[{index}].type",
                code="unsupported_tool",
            )
        else:
            omitted.append(_tool_type(tool))
    allowed = frozenset(f.name for f in functions)
    choice = request.tool_choice if request.HasField("tool_choice") else None
    choice_kind = choice.WhichOneof("choice") if choice is not None else None
    if choice is not None and choice_kind == "mode" and choice.mode == tools_pb2.TOOL_CHOICE_MODE_NONE:
        allowed = frozenset()
    elif choice is not None and choice_kind == "function":
        allowed = allowed & {choice.function.name}
    elif choice is not None and choice_kind == "allowed_tools":
        listed = {t.function.name for t in choice.allowed_tools.tools if t.WhichOneof("tool") == "function"}
        allowed = allowed & listed
        functions = [f for f in functions if f.name in allowed]
        choice = tools_pb2.ToolChoice(mode=choice.allowed_tools.mode or tools_pb2.TOOL_CHOICE_MODE_AUTO)
    return ToolPlan(functions=functions, choice=choice, allowed=allowed, names=names, omitted=tuple(omitted))


def conversation(request: Request, sealer: Sealer | None = None) -> list[items_pb2.Item]:
    """Instructions as the first system message, then the input items."""
    items: list[items_pb2.Item] = []
    if request.HasField("instructions") and request.instructions:
        system = items_pb2.Item()
        system.message.role = items_pb2.MESSAGE_ROLE_SYSTEM
        system.message.content.text = request.instructions
        items.append(system)
    which = request.input.WhichOneof("value")
    if which == "text":
        user = items_pb2.Item()
        user.message.role = items_pb2.MESSAGE_ROLE_USER
        user.message.content.text = request.input.text
        items.append(user)
    elif which == "items":
        for index, item in enumerate(request.input.items.items):
            kind = item.WhichOneof("item")
            if kind == "item_reference":
                raise invalid("Item references need a stored response; none matches this id.",
                              f"input[{index}].id", code="item_not_found")
            if kind not in _INPUT_KINDS:
                tag = _tool_type_of_item(item)
                raise invalid(f"Input items of type {tag!r} are not supported.", f"input[{index}].type")
            if kind == "message" and item.message.role == items_pb2.MESSAGE_ROLE_UNSPECIFIED:
                raise invalid("Missing required parameter: 'role'.", f"input[{index}].role")
            items.append(_for_upstream(item, index, sealer))
    if which is None or (which == "items" and not request.input.items.items):
        raise invalid("The request has no input: give 'input' as a string or a list of items.", "input",
                      code="missing_input")
    return items


def _for_upstream(item: items_pb2.Item, index: int, sealer: Sealer | None) -> items_pb2.Item:
    """Namespaced calls get their flat upstream name; encrypted reasoning is restored."""
    kind = item.WhichOneof("item")
    if kind == "function_call" and item.function_call.HasField("namespace"):
        flat = items_pb2.Item()
        flat.CopyFrom(item)
        flat.function_call.name = f"{item.function_call.namespace}{NAMESPACE_SEPARATOR}{item.function_call.name}"
        flat.function_call.ClearField("namespace")
        return flat
    if kind == "reasoning" and item.reasoning.encrypted_content and sealer is not None:
        param = f"input[{index}].encrypted_content"
        data = orjson.loads(sealer.open(item.reasoning.encrypted_content, REASONING_PURPOSE, param))
        restored = items_pb2.Item()
        restored.CopyFrom(item)
        if not restored.reasoning.content:
            restored.reasoning.content.extend(
                content_pb2.ContentPart(reasoning_text=content_pb2.ReasoningTextContent(text=text))
                for text in data.get("content", []))
        if not restored.reasoning.summary:
            restored.reasoning.summary.extend(
                content_pb2.ContentPart(summary_text=content_pb2.SummaryTextContent(text=text))
                for text in data.get("summary", []))
        return restored
    return item


def _tool_type_of_item(item: items_pb2.Item) -> str:
    value = item.other.fields.get("type")
    return value.string_value if value is not None else "unknown"


def initial_response(request: Request, model: ModelRef, store: bool) -> response_pb2.Response:
    """The response snapshot before any output, echoing the request parameters with their defaults."""
    r = response_pb2.Response(
        id=new_id("resp"),
        object="response",
        created_at=int(time.time()),
        status=response_pb2.RESPONSE_STATUS_IN_PROGRESS,
        model=model.full,
        truncation=request.truncation if request.HasField("truncation") else response_pb2.TRUNCATION_DISABLED,
        parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        top_logprobs=request.top_logprobs,
        temperature=request.temperature if request.HasField("temperature") else 1.0,
        store=store,
        background=request.background,
        service_tier=response_pb2.SERVICE_TIER_DEFAULT,
    )
    for name in ("previous_response_id", "instructions", "max_output_tokens", "max_tool_calls",
                 "safety_identifier", "prompt_cache_key", "user", "top_k"):
        if request.HasField(name):
            setattr(r, name, getattr(request, name))
    # Tools the upstream never sees are reported in a header, not echoed.
    r.tools.extend(t for t in request.tools if t.WhichOneof("tool") != "other")
    if request.HasField("tool_choice"):
        r.tool_choice.CopyFrom(request.tool_choice)
    else:
        r.tool_choice.mode = tools_pb2.TOOL_CHOICE_MODE_AUTO
    r.text.CopyFrom(request.text)
    if not r.text.HasField("format"):
        r.text.format.text.SetInParent()
    if request.HasField("reasoning"):
        r.reasoning.CopyFrom(request.reasoning)
    if request.HasField("prompt"):
        r.prompt.CopyFrom(request.prompt)
    r.metadata.update(request.metadata)
    return r


def prepare(request: Request, config: Config, *, stream: bool, timeout: float | None,
            sealer: Sealer | None = None) -> Prepared:
    name = request.model if request.HasField("model") and request.model else config.default_model
    if not name:
        raise invalid("Missing required parameter: 'model' (no default model is configured).", "model")
    model = resolve_model(name, config)
    tools = plan_tools(request, config)
    turn = Turn(
        model=model.model,
        items=conversation(request, sealer),
        stream=stream,
        tools=tools.functions,
        tool_choice=tools.choice,
        timeout=timeout,
    )
    for name in ("max_output_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                 "top_k", "top_logprobs", "parallel_tool_calls", "user"):
        if request.HasField(name):  # type: ignore[arg-type]
            setattr(turn, name, getattr(request, name))
    if request.HasField("text"):
        turn.text = request.text
    if request.HasField("reasoning"):
        turn.reasoning = request.reasoning
    store = request.store if request.HasField("store") else False
    include = set(request.include)
    seal = None
    if sealer is not None and responses_service_pb2.INCLUDE_REASONING_ENCRYPTED_CONTENT in include:
        def seal(data: bytes) -> str:
            return sealer.seal(data, REASONING_PURPOSE)
    options = EngineOptions(
        allowed_tools=tools.allowed,
        tool_names=tools.names,
        max_tool_calls=request.max_tool_calls if request.HasField("max_tool_calls") else None,
        parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
        logprobs=responses_service_pb2.INCLUDE_MESSAGE_OUTPUT_TEXT_LOGPROBS in include,
        seal_reasoning=seal,
        prices=config.prices.get(model.full),
    )
    return Prepared(turn=turn, response=initial_response(request, model, store), model=model,
                    omitted_tools=tools.omitted, options=options)
