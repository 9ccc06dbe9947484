"""Pure translation between a :class:`Turn` and the Anthropic Messages API wire format.

Plain dicts in and out, no I/O: the HTTP side lives in :mod:`switchboard.service.providers.anthropic`.

Thinking signatures: a thinking block's signature comes out as a ``ReasoningOpaqueDelta`` (the gateway seals it
into the reasoning item's ``encrypted_content``); a reasoning item sent back with the signature restored becomes a
signed ``thinking`` block. ``redacted_thinking`` blocks (opaque ``data`` only) are skipped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import grpc
import orjson

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningOpaqueDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
    UsageDelta,
    message_text,
)
from switchboard.service.providers.chat_translate import status_error as _chat_status_error
from switchboard.service.providers.chat_translate import struct_to_dict
from switchboard.service.providers.http import protocol_error
from switchboard.shared.errors import ApiError, UpstreamError, invalid

JSON = dict[str, Any]

# Anthropic's smallest thinking budget is 1024 tokens; the others follow the usual low/medium/high spread.
MIN_BUDGET = 1024
_BUDGET = {response_pb2.REASONING_EFFORT_MINIMAL: MIN_BUDGET, response_pb2.REASONING_EFFORT_LOW: MIN_BUDGET,
           response_pb2.REASONING_EFFORT_MEDIUM: 4096, response_pb2.REASONING_EFFORT_HIGH: 16384,
           response_pb2.REASONING_EFFORT_XHIGH: 32768}
_TOOL_MODE = {tools_pb2.TOOL_CHOICE_MODE_AUTO: "auto", tools_pb2.TOOL_CHOICE_MODE_NONE: "none",
              tools_pb2.TOOL_CHOICE_MODE_REQUIRED: "any"}
_STOP: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "tool_use": "tool_calls",
    "max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter",
}
_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))
_INSTRUCTIONS = (items_pb2.MESSAGE_ROLE_SYSTEM, items_pb2.MESSAGE_ROLE_DEVELOPER)
# Error types Anthropic uses for transient trouble; anything else mid-stream will fail again the same way.
_TRANSIENT = frozenset(("overloaded_error", "api_error", "rate_limit_error", "timeout_error"))
# Anthropic stops with "refusal" and often no text at all; the client must still see why the answer is empty.
REFUSAL_TEXT = "The model declined to respond to this request."


# ---------------------------------------------------------------- request


def build_body(turn: Turn, *, default_max_tokens: int = 4096) -> JSON:
    """The Messages API request body for ``turn``; only keys the turn sets are present (max_tokens always is)."""
    system, messages = build_messages(turn.items)
    instruction = format_instruction(turn.text)
    if instruction:
        system.append(instruction)
    max_tokens = turn.max_output_tokens if turn.max_output_tokens is not None else default_max_tokens
    body: JSON = {"model": turn.model, "max_tokens": max_tokens, "messages": messages, "stream": turn.stream}
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(turn, key)
        if value is not None:
            body[key] = value
    if turn.user:
        body["metadata"] = {"user_id": turn.user}
    _add_tools(body, turn)
    budget = thinking_budget(turn.reasoning)
    if budget is not None and body.get("tool_choice", {}).get("type") in ("any", "tool"):
        # Anthropic refuses thinking with a forced tool call; the forced call is this request's explicit ask,
        # while reasoning effort is often a per-model default, so the thinking gives way.
        budget = None
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if budget >= max_tokens:
            # Anthropic wants budget < max_tokens, and max_tokens counts thinking too: keep the room the
            # client (or the default) asked for the answer on top of the thinking budget.
            body["max_tokens"] = budget + max_tokens
    # presence/frequency penalties and top_logprobs have no Messages API equivalent; they are dropped.
    return body


def thinking_budget(reasoning: response_pb2.ReasoningConfig | None) -> int | None:
    """budget_tokens for ``reasoning``, or None for no extended thinking."""
    if reasoning is None or (reasoning.HasField("enabled") and not reasoning.enabled):
        return None
    if reasoning.HasField("max_tokens") and reasoning.max_tokens > 0:
        return max(reasoning.max_tokens, MIN_BUDGET)
    if reasoning.HasField("effort"):
        return _BUDGET.get(reasoning.effort)  # none/unspecified: no thinking
    return _BUDGET[response_pb2.REASONING_EFFORT_MEDIUM] if reasoning.HasField("enabled") else None


def format_instruction(text: response_pb2.TextConfig | None) -> str | None:
    """Anthropic has no response_format: structured output becomes a system instruction (best effort,
    the model is asked, not forced)."""
    if text is None or not text.HasField("format"):
        return None
    kind = text.format.WhichOneof("format")
    tail = "Reply with the JSON only: no other text, no explanation and no code fences."
    if kind == "json_object":
        return "Respond with a single valid JSON object. " + tail
    if kind == "json_schema":
        js = text.format.json_schema
        about = f" ({js.description})" if js.HasField("description") else ""
        schema = orjson.dumps(struct_to_dict(js.schema)).decode()
        return f"Respond with JSON that conforms to the JSON Schema {js.name!r}{about} below. {tail}\n\n{schema}"
    return None


def _add_tools(body: JSON, turn: Turn) -> None:
    tools = turn.tools
    choice: JSON | None = None
    if turn.tool_choice is not None:
        kind = turn.tool_choice.WhichOneof("choice")
        if kind == "mode" and turn.tool_choice.mode in _TOOL_MODE:
            choice = {"type": _TOOL_MODE[turn.tool_choice.mode]}
        elif kind == "function":
            choice = {"type": "tool", "name": turn.tool_choice.function.name}
    if not tools:
        return  # tool_choice without tools is a 400 at Anthropic
    body["tools"] = [_tool(tool) for tool in tools]
    if turn.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
        choice = {"type": "auto"} if choice is None else choice
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        body["tool_choice"] = choice


def _tool(tool: tools_pb2.FunctionTool) -> JSON:
    out: JSON = {"name": tool.name}
    if tool.HasField("description"):
        out["description"] = tool.description
    # input_schema is required; a function without parameters takes an empty object.
    out["input_schema"] = (struct_to_dict(tool.parameters) if tool.HasField("parameters")
                           else {"type": "object", "properties": {}})
    return out


def build_messages(items: Iterable[items_pb2.Item]) -> tuple[list[str], list[JSON]]:
    """(system texts, messages). Consecutive blocks of one role share a message: an assistant turn is
    thinking + text + tool_use blocks, and the tool results of one turn go back in one user message
    (tool_result blocks first, as Anthropic requires, then any user text that follows)."""
    system: list[str] = []
    messages: list[JSON] = []

    def add(role: str, blocks: list[JSON]) -> None:
        if not blocks:
            return  # empty content is a 400 at Anthropic
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for item in items:
        kind = item.WhichOneof("item")
        if kind == "message":
            msg = item.message
            if msg.role in _INSTRUCTIONS:
                # Anthropic has one top-level system prompt; later developer messages join it.
                text = message_text(msg)
                if text:
                    system.append(text)
            elif msg.role == items_pb2.MESSAGE_ROLE_ASSISTANT:
                add("assistant", _assistant_blocks(msg.content))
            else:
                add("user", _non_empty([_user_block(part) for part in _parts(msg.content)]))
        elif kind == "function_call":
            add("assistant", [_tool_use(item.function_call)])
        elif kind == "function_call_output":
            add("user", [_tool_result(item.function_call_output)])
        elif kind == "reasoning":
            block = _thinking(item.reasoning)
            if block is not None:
                add("assistant", [block])
        else:
            raise invalid(f"input items of type {kind!r} cannot be sent to an Anthropic upstream", "input",
                          code="unsupported_input_item")
    return system, messages


def _parts(content: content_pb2.Content) -> list[content_pb2.ContentPart]:
    if content.WhichOneof("value") == "parts":
        return list(content.parts.parts)
    return [content_pb2.ContentPart(input_text=content_pb2.InputTextContent(text=content.text))]


def _assistant_blocks(content: content_pb2.Content) -> list[JSON]:
    blocks: list[JSON] = []
    for part in _parts(content):
        kind = part.WhichOneof("part")
        if kind in _TEXT_PARTS:
            text = getattr(part, kind).text
        elif kind == "refusal":
            text = part.refusal.refusal  # Anthropic has no refusal block: the words are what the model said
        else:
            raise invalid(f"assistant messages cannot carry {kind} content", "input", code="unsupported_content")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_block(part: content_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": getattr(part, kind).text}
    if kind == "refusal":
        return {"type": "text", "text": part.refusal.refusal}
    if kind == "input_image":
        return _image(part.input_image)
    if kind == "input_file":
        return _document(part.input_file)
    raise invalid(f"{kind or 'empty'} content cannot be sent to an Anthropic upstream", "input",
                  code="unsupported_content")


def _non_empty(blocks: list[JSON]) -> list[JSON]:
    return [b for b in blocks if b["type"] != "text" or b["text"]]  # empty text blocks are a 400


def _data_url(url: str, what: str) -> tuple[str, str]:
    """(media type, base64 data) of a ``data:<type>;base64,<data>`` URL."""
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise invalid(f"{what} data URLs must be base64 encoded (data:<type>;base64,...)", "input")
    return header[5:].split(";", 1)[0], data


def _image(image: content_pb2.InputImageContent) -> JSON:
    url = image.image_url if image.HasField("image_url") else ""
    if url.startswith("data:"):
        media, data = _data_url(url, "input_image")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid("Anthropic upstreams take images as data URLs or http(s) URLs, not file ids", "input",
                  code="unsupported_content")


def _document(file: content_pb2.InputFileContent) -> JSON:
    if file.HasField("file_data"):
        data = file.file_data
        # Bare base64 (no data: prefix) is taken as a PDF, the only binary type Anthropic reads.
        media, payload = _data_url(data, "input_file") if data.startswith("data:") else ("application/pdf", data)
        if media == "application/pdf":
            source: JSON = {"type": "base64", "media_type": media, "data": payload}
        elif media == "text/plain":
            try:
                text = base64.b64decode(payload, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise invalid("input_file text/plain data is not base64-encoded UTF-8", "input") from None
            source = {"type": "text", "media_type": media, "data": text}
        else:
            raise invalid(f"Anthropic upstreams read PDF and plain-text files, not {media or 'untyped data'}",
                          "input", code="unsupported_content")
    elif file.HasField("file_url") and file.file_url.startswith(("https://", "http://")):
        source = {"type": "url", "url": file.file_url}
    else:
        raise invalid("Anthropic upstreams take files as data or an http(s) URL, not file ids", "input",
                      code="unsupported_content")
    block: JSON = {"type": "document", "source": source}
    if file.HasField("filename"):
        block["title"] = file.filename
    return block


def _tool_use(call: items_pb2.FunctionCall) -> JSON:
    raw = call.arguments.strip()
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise invalid(f"the arguments of function_call {call.call_id!r} ({call.name}) are not valid JSON",
                      "input") from None
    if not isinstance(value, dict):
        raise invalid(f"the arguments of function_call {call.call_id!r} ({call.name}) must be a JSON object",
                      "input")
    return {"type": "tool_use", "id": call.call_id, "name": call.name, "input": value}


def _tool_result(output: items_pb2.FunctionCallOutput) -> JSON:
    block: JSON = {"type": "tool_result", "tool_use_id": output.call_id}
    if output.output.WhichOneof("value") != "parts":
        if output.output.text:
            block["content"] = output.output.text
        return block
    content = _non_empty([_user_block(part) for part in output.output.parts.parts])
    if content:
        block["content"] = content
    return block


def _thinking(item: items_pb2.ReasoningItem) -> JSON | None:
    # Anthropic only takes back thinking it signed (the signature travels as encrypted_content) and
    # rejects unsigned thinking blocks. Reasoning from another upstream, or from a client that kept no
    # encrypted_content, therefore cannot be replayed: it is dropped rather than failing the request.
    if not item.encrypted_content:
        return None
    # The signature covers the exact text Anthropic sent, so parts are joined without separators.
    text = "".join(p.reasoning_text.text or p.text.text for p in item.content)
    if not text:
        text = "".join(p.summary_text.text or p.text.text for p in item.summary)
    return {"type": "thinking", "thinking": text, "signature": item.encrypted_content}


# ---------------------------------------------------------------- response


def usage_delta(usage: JSON) -> UsageDelta:
    # Anthropic's input_tokens excludes cache reads and writes; Responses counts every prompt token.
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return UsageDelta(input_tokens=(usage.get("input_tokens") or 0) + read + written,
                      output_tokens=usage.get("output_tokens") or 0, cached_tokens=read, cache_write_tokens=written)


def end_deltas(stop_reason: str | None, produced_text: bool, saw_calls: bool, usage: JSON | None) -> list[Delta]:
    """The deltas after the content: a refusal note, usage, the finish."""
    reason = _STOP.get(stop_reason or "end_turn", "stop")
    if saw_calls and reason == "stop":
        reason = "tool_calls"  # pause_turn after a tool_use still waits on the client's result
    deltas: list[Delta] = []
    if stop_reason == "refusal" and not produced_text:
        deltas.append(RefusalDelta(REFUSAL_TEXT))
    if usage:
        deltas.append(usage_delta(usage))
    deltas.append(Finish(reason))
    return deltas


def parse_message(data: Any) -> list[Delta]:
    """The deltas of a non-streaming Messages API response, in the order a stream would give them."""
    if not isinstance(data, dict):
        raise protocol_error("the upstream's response is not a JSON object")
    if data.get("type") == "error":
        raise stream_error(data)
    deltas: list[Delta] = []
    calls = 0
    produced_text = False
    for block in data.get("content") or ():
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            produced_text = True
            deltas.append(TextDelta(block["text"]))
        elif kind == "thinking" and block.get("thinking"):
            deltas.append(ReasoningDelta(block["thinking"]))
            if block.get("signature"):
                deltas.append(ReasoningOpaqueDelta(block["signature"]))
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            deltas.append(ToolCallDelta(calls, block.get("id"), block.get("name"), args))
            calls += 1
    return deltas + end_deltas(data.get("stop_reason"), produced_text, calls > 0, data.get("usage"))


# ---------------------------------------------------------------- errors


def stream_error(data: JSON) -> UpstreamError:
    """An ``error`` event (or error body) inside a 200 response."""
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    etype = str(err.get("type") or "")
    message = str(err.get("message") or etype or "unknown error")
    return UpstreamError(f"upstream error: {message}", retryable=etype in _TRANSIENT)


def status_error(status: int, body: bytes, headers: Any) -> ApiError:
    """As for Chat Completions (429 retry-after, 5xx and 529 "overloaded" retryable), plus Anthropic's
    wording for an over-long prompt."""
    err = _chat_status_error(status, body, headers)
    if status in (400, 413) and "prompt is too long" in err.message.lower():
        # Retryable: a fallback model with a larger window may take the same input.
        return UpstreamError(err.message, upstream_status=status, code="context_length_exceeded", retryable=True,
                             status=grpc.StatusCode.INVALID_ARGUMENT)
    return err
