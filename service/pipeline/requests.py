"""From a CreateResponseRequest to what the engine and a provider need: the initial Response snapshot
(with the echo of the request parameters) and the provider Turn (the conversation, resolved)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from google.protobuf import struct_pb2

from switchboard.responses.v1 import (
    content_pb2,
    items_pb2,
    response_pb2,
    responses_service_pb2,
    tools_pb2,
)
from switchboard.service.mcp import tools as mcp_tools
from switchboard.service.pipeline.engine import EngineOptions, new_id
from switchboard.service.providers.base import Turn
from switchboard.shared.config.settings import Config
from switchboard.shared.crypto import Sealer
from switchboard.shared.errors import invalid

Request = responses_service_pb2.CreateResponseRequest

# Input item kinds a provider can take. Everything else needs the store (item_reference) or is unknown.
_INPUT_KINDS = {"message", "function_call", "function_call_output", "reasoning", "mcp_list_tools", "mcp_call",
                "mcp_approval_request", "mcp_approval_response"}


@dataclass(frozen=True)
class Prepared:
    turn: Turn
    response: response_pb2.Response
    # The requested model name; the attempt that answers decides the provider.
    model: str
    omitted_tools: tuple[str, ...]
    options: EngineOptions = field(default_factory=EngineOptions)
    # The request's input items with ids (stored and listed), and the earlier turns it continues.
    inputs: list[items_pb2.Item] = field(default_factory=list)
    history: list[items_pb2.Item] = field(default_factory=list)


REASONING_PURPOSE = "reasoning.v1"
COMPACTION_PURPOSE = "compaction.v1"
# Namespaced tools reach the upstream as plain functions named <namespace>__<name>.
NAMESPACE_SEPARATOR = "__"


@dataclass(frozen=True)
class ToolPlan:
    functions: list[tools_pb2.FunctionTool]
    choice: tools_pb2.ToolChoice | None
    allowed: frozenset[str]
    names: dict[str, tuple[str, str]]
    omitted: tuple[str, ...]


def _declared_type(other: struct_pb2.Struct) -> str:
    """The `type` of an object kept verbatim (an unmodelled tool or item)."""
    value = other.fields.get("type")
    return value.string_value if value is not None else "unknown"


def _tool_type(tool: tools_pb2.Tool) -> str:
    kind = tool.WhichOneof("tool")
    return _declared_type(tool.other) if kind == "other" else str(kind)


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
        elif kind == "mcp":
            continue  # its functions are known once the server's tools are listed (switchboard.service.mcp.tools)
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


_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
                "compaction": "cmp", "mcp_list_tools": "mcpl", "mcp_call": "mcp", "mcp_approval_request": "mcpr",
                "mcp_approval_response": "mcpa"}


def input_items(request: Request) -> list[items_pb2.Item]:
    """The request's input as items, each with an id: what is stored, listed and chained."""
    items: list[items_pb2.Item] = []
    which = request.input.WhichOneof("value")
    if which == "text":
        user = items_pb2.Item()
        user.message.role = items_pb2.MESSAGE_ROLE_USER
        user.message.content.text = request.input.text
        items.append(user)
    elif which == "items":
        for index, item in enumerate(request.input.items.items):
            kind = item.WhichOneof("item")
            if kind not in _INPUT_KINDS and kind not in ("item_reference", "compaction"):
                tag = _declared_type(item.other)
                raise invalid(f"Input items of type {tag!r} are not supported.", f"input[{index}].type")
            if kind == "message" and item.message.role == items_pb2.MESSAGE_ROLE_UNSPECIFIED:
                raise invalid("Missing required parameter: 'role'.", f"input[{index}].role")
            copy = items_pb2.Item()
            copy.CopyFrom(item)
            items.append(copy)
    if not items:
        raise invalid("The request has no input: give 'input' as a string or a list of items.", "input",
                      code="missing_input")
    for item in items:
        prefix = _ID_PREFIXES.get(str(item.WhichOneof("item")))
        if prefix is not None:
            sub = getattr(item, str(item.WhichOneof("item")))
            if not sub.id:
                sub.id = new_id(prefix)
    return items


def normalised_input_item(item: items_pb2.Item) -> items_pb2.Item:
    """A stored input item as OpenAI lists it, whatever shorthand the request used: an id and a status on every
    item, a message's content as typed parts (`input_text` from a user, system or developer; `output_text` from
    the assistant), an image's `detail` spelled out."""
    out = items_pb2.Item()
    out.CopyFrom(item)
    kind = out.WhichOneof("item")
    sub = getattr(out, str(kind)) if kind in _ID_PREFIXES else None
    if sub is not None and kind != "compaction" and not sub.status:
        sub.status = items_pb2.ITEM_STATUS_COMPLETED
    if kind != "message":
        return out
    message = out.message
    assistant = message.role == items_pb2.MESSAGE_ROLE_ASSISTANT
    parts: list[content_pb2.ContentPart] = []
    if message.content.WhichOneof("value") == "parts":
        parts = list(message.content.parts.parts)
    elif message.content.text:
        parts = [content_pb2.ContentPart(input_text=content_pb2.InputTextContent(text=message.content.text))]
    normal = content_pb2.ContentList()
    for part in parts:
        which = part.WhichOneof("part")
        if assistant and which in ("input_text", "text"):
            normal.parts.add(output_text=content_pb2.OutputTextContent(text=getattr(part, which).text))
        elif not assistant and which in ("output_text", "text"):
            normal.parts.add(input_text=content_pb2.InputTextContent(text=getattr(part, which).text))
        else:
            copy = normal.parts.add()
            copy.CopyFrom(part)
            if which == "input_image" and not copy.input_image.detail:
                copy.input_image.detail = content_pb2.IMAGE_DETAIL_AUTO
    message.content.parts.CopyFrom(normal)
    return out


def conversation(request: Request, inputs: list[items_pb2.Item], history: list[items_pb2.Item],
                 sealer: Sealer | None = None) -> list[items_pb2.Item]:
    """What the upstream sees: instructions as the first system message (never inherited), the earlier turns
    of the chain, then the input, with references and compactions expanded."""
    items: list[items_pb2.Item] = []
    if request.HasField("instructions") and request.instructions:
        system = items_pb2.Item()
        system.message.role = items_pb2.MESSAGE_ROLE_SYSTEM
        system.message.content.text = request.instructions
        items.append(system)
    known = {item_id(i): i for i in history if item_id(i)}
    # A reference carries the id of the item it names: it must not stand for that item.
    known.update((item_id(i), i) for i in inputs if item_id(i) and i.WhichOneof("item") != "item_reference")
    for item in history:
        items.extend(_expand(item, "previous_response_id", sealer, known))
    for index, item in enumerate(inputs):
        if item.WhichOneof("item") == "item_reference":
            found = known.get(item.item_reference.id)
            if found is None:
                raise invalid(f"No item with id {item.item_reference.id!r} in this conversation.",
                              f"input[{index}].id", code="item_not_found")
            item = found
        items.extend(_expand(item, f"input[{index}]", sealer, known))
    _check_outputs_answer_calls(inputs, items)
    return items


def for_upstream(items: list[items_pb2.Item], sealer: Sealer | None) -> list[items_pb2.Item]:
    """Output items of this response as the upstream reads them in its next call (MCP tool rounds)."""
    return [x for item in items for x in _expand(item, "output", sealer, {})]


def _resolved(inputs: list[items_pb2.Item], history: list[items_pb2.Item]) -> list[items_pb2.Item]:
    """The input as stored: an `item_reference` becomes the item it names (as OpenAI lists it; conversation()
    already refused references to nothing, and a chain expands the copy just as it would the reference)."""
    known = {item_id(i): i for i in history if item_id(i)}
    return [known.get(i.item_reference.id, i) if i.WhichOneof("item") == "item_reference" else i for i in inputs]


def _check_outputs_answer_calls(inputs: list[items_pb2.Item], conversation: list[items_pb2.Item]) -> None:
    """As OpenAI: a tool output must answer a call of this conversation (the chain, the connection's cached
    chain or this input, compactions and references expanded)."""
    calls = {i.function_call.call_id for i in conversation if i.WhichOneof("item") == "function_call"}
    for index, item in enumerate(inputs):
        if item.WhichOneof("item") == "function_call_output" and item.function_call_output.call_id not in calls:
            raise invalid(f"No tool call found for function call output with call_id "
                          f"{item.function_call_output.call_id}.", f"input[{index}]")


def item_id(item: items_pb2.Item) -> str:
    kind = item.WhichOneof("item")
    if kind is None or kind == "other":
        return ""
    return str(getattr(item, kind).id)


def _expand(item: items_pb2.Item, param: str, sealer: Sealer | None,
            known: dict[str, items_pb2.Item]) -> list[items_pb2.Item]:
    mcp = mcp_tools.to_upstream(item, known)
    if mcp is not None:
        return mcp
    if item.WhichOneof("item") != "compaction":
        return [_for_upstream(item, param, sealer)]
    if sealer is None:
        raise invalid("Compaction items cannot be read here.", param, code="invalid_encrypted_content")
    sealed = sealer.open(item.compaction.encrypted_content, COMPACTION_PURPOSE, f"{param}.encrypted_content")
    # A compaction of a compacted context holds compaction items itself.
    return [x for inner in items_pb2.ItemList.FromString(sealed).items
            for x in _expand(inner, param, sealer, known)]


def expand_compactions(items: list[items_pb2.Item], sealer: Sealer, param: str) -> list[items_pb2.Item]:
    """Items with every compaction opened (and so verified) in place; other items unchanged."""
    out: list[items_pb2.Item] = []
    for index, item in enumerate(items):
        if item.WhichOneof("item") != "compaction":
            out.append(item)
            continue
        where = f"{param}[{index}].encrypted_content"
        sealed = sealer.open(item.compaction.encrypted_content, COMPACTION_PURPOSE, where)
        out.extend(expand_compactions(list(items_pb2.ItemList.FromString(sealed).items), sealer, param))
    return out


def _for_upstream(item: items_pb2.Item, param: str, sealer: Sealer | None) -> items_pb2.Item:
    """Namespaced calls get their flat upstream name; encrypted reasoning is restored."""
    kind = item.WhichOneof("item")
    if kind == "function_call" and item.function_call.HasField("namespace"):
        flat = items_pb2.Item()
        flat.CopyFrom(item)
        flat.function_call.name = f"{item.function_call.namespace}{NAMESPACE_SEPARATOR}{item.function_call.name}"
        flat.function_call.ClearField("namespace")
        return flat
    if kind == "reasoning" and item.reasoning.encrypted_content and sealer is not None:
        data = orjson.loads(sealer.open(item.reasoning.encrypted_content, REASONING_PURPOSE,
                                        f"{param}.encrypted_content"))
        restored = items_pb2.Item()
        restored.CopyFrom(item)
        # The upstream gets back its own proof (or nothing), never our sealed envelope.
        restored.reasoning.encrypted_content = data.get("upstream") or ""
        if not restored.reasoning.encrypted_content:
            restored.reasoning.ClearField("encrypted_content")
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


def initial_response(request: Request, model: str, store: bool) -> response_pb2.Response:
    """The response snapshot before any output, echoing the request parameters with their defaults."""
    r = response_pb2.Response(
        id=new_id("resp"),
        object="response",
        created_at=int(time.time()),
        status=response_pb2.RESPONSE_STATUS_IN_PROGRESS,
        model=model,
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
    r.tools.extend(mcp_tools.without_secrets(t) for t in request.tools if t.WhichOneof("tool") != "other")
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
            sealer: Sealer | None = None, history: list[items_pb2.Item] | None = None,
            store_default: bool = True) -> Prepared:
    model = request.model if request.HasField("model") and request.model else config.default_model
    if not model:
        raise invalid("Missing required parameter: 'model' (no default model is configured).", "model")
    tools = plan_tools(request, config)
    inputs = input_items(request)
    history = history or []
    turn = Turn(
        model="",  # set by each upstream attempt
        items=conversation(request, inputs, history, sealer),
        stream=stream,
        tools=tools.functions,
        tool_choice=tools.choice,
        timeout=timeout,
    )
    for name in ("max_output_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty",
                 "top_k", "top_logprobs", "parallel_tool_calls", "user"):
        if request.HasField(name):
            setattr(turn, name, getattr(request, name))
    if request.HasField("text"):
        turn.text = request.text
    if request.HasField("reasoning"):
        turn.reasoning = request.reasoning
    store = request.store if request.HasField("store") else store_default
    include = set(request.include)
    seal = None
    if sealer is not None:
        def seal(data: bytes) -> str:
            return sealer.seal(data, REASONING_PURPOSE)
    options = EngineOptions(
        allowed_tools=tools.allowed,
        tool_names=tools.names,
        max_tool_calls=request.max_tool_calls if request.HasField("max_tool_calls") else None,
        parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
        logprobs=responses_service_pb2.INCLUDE_MESSAGE_OUTPUT_TEXT_LOGPROBS in include,
        seal_reasoning=seal,
        include_encrypted=responses_service_pb2.INCLUDE_REASONING_ENCRYPTED_CONTENT in include,
        prices=config.prices.get(model),
    )
    return Prepared(turn=turn, response=initial_response(request, model, store), model=model,
                    omitted_tools=tools.omitted, options=options, inputs=_resolved(inputs, history), history=history)
