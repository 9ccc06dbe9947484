"""Pure translation between a :class:`Turn` and the OpenAI Chat Completions wire format.

Everything here works on plain dicts (what orjson serialises fastest) and does no I/O, so it is tested
table-driven without a server.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from time import time
from typing import Any

import grpc
import orjson
from google.protobuf import struct_pb2

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Turn,
    UsageDelta,
    message_text,
)
from switchboard.service.providers.http import protocol_error
from switchboard.shared.errors import ApiError, UpstreamError, invalid

JSON = dict[str, Any]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",  # the pre-tools name of the same thing
}
_DETAIL = {content_pb2.IMAGE_DETAIL_LOW: "low", content_pb2.IMAGE_DETAIL_HIGH: "high",
           content_pb2.IMAGE_DETAIL_AUTO: "auto"}
_TOOL_MODE = {tools_pb2.TOOL_CHOICE_MODE_AUTO: "auto", tools_pb2.TOOL_CHOICE_MODE_NONE: "none",
              tools_pb2.TOOL_CHOICE_MODE_REQUIRED: "required"}
_EFFORT = {response_pb2.REASONING_EFFORT_NONE: "none", response_pb2.REASONING_EFFORT_MINIMAL: "minimal",
           response_pb2.REASONING_EFFORT_LOW: "low", response_pb2.REASONING_EFFORT_MEDIUM: "medium",
           response_pb2.REASONING_EFFORT_HIGH: "high", response_pb2.REASONING_EFFORT_XHIGH: "xhigh"}
_VERBOSITY = {response_pb2.VERBOSITY_LOW: "low", response_pb2.VERBOSITY_MEDIUM: "medium",
              response_pb2.VERBOSITY_HIGH: "high"}
_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))
_ROLE = {items_pb2.MESSAGE_ROLE_SYSTEM: "system", items_pb2.MESSAGE_ROLE_DEVELOPER: "developer",
         items_pb2.MESSAGE_ROLE_USER: "user", items_pb2.MESSAGE_ROLE_UNSPECIFIED: "user"}


# ---------------------------------------------------------------- request


def build_body(turn: Turn, *, developer_role: bool = True, max_tokens_param: str = "max_tokens") -> JSON:
    """The Chat Completions request body for ``turn``; only keys the turn sets are present."""
    body: JSON = {"model": turn.model, "messages": build_messages(turn.items, developer_role=developer_role),
                  "stream": turn.stream}
    if turn.stream:
        body["stream_options"] = {"include_usage": True}
    if turn.max_output_tokens is not None:
        body[max_tokens_param] = turn.max_output_tokens
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_k", "user"):
        value = getattr(turn, key)
        if value is not None:
            body[key] = value
    if turn.top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = turn.top_logprobs
    _add_tools(body, turn)
    if turn.text is not None:
        fmt = _response_format(turn.text)
        if fmt is not None:
            body["response_format"] = fmt
        if turn.text.verbosity:
            body["verbosity"] = _VERBOSITY[turn.text.verbosity]
    if turn.reasoning is not None and turn.reasoning.effort:
        body["reasoning_effort"] = _EFFORT[turn.reasoning.effort]
    return body


def _add_tools(body: JSON, turn: Turn) -> None:
    tools = turn.tools
    choice: Any = None
    if turn.tool_choice is not None:
        kind = turn.tool_choice.WhichOneof("choice")
        if kind == "mode":
            choice = _TOOL_MODE.get(turn.tool_choice.mode)
        elif kind == "function":
            choice = {"type": "function", "function": {"name": turn.tool_choice.function.name}}
    if not tools:
        # tool_choice and parallel_tool_calls without tools are a 400 at OpenAI.
        return
    body["tools"] = [_tool(tool) for tool in tools]
    if choice is not None:
        body["tool_choice"] = choice
    if turn.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = turn.parallel_tool_calls


def _tool(tool: tools_pb2.FunctionTool) -> JSON:
    fn: JSON = {"name": tool.name}
    if tool.HasField("description"):
        fn["description"] = tool.description
    if tool.HasField("parameters"):
        fn["parameters"] = struct_to_dict(tool.parameters)
    if tool.HasField("strict"):
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _response_format(text: response_pb2.TextConfig) -> JSON | None:
    if not text.HasField("format"):
        return None
    kind = text.format.WhichOneof("format")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        js = text.format.json_schema
        schema: JSON = {"name": js.name, "schema": struct_to_dict(js.schema)}
        if js.strict:
            schema["strict"] = True
        if js.HasField("description"):
            schema["description"] = js.description
        return {"type": "json_schema", "json_schema": schema}
    return None  # plain text is the default


def build_messages(items: Iterable[items_pb2.Item], *, developer_role: bool = True) -> list[JSON]:
    """Chat messages for Responses items.

    Chat Completions wants one assistant message per model turn, so a function call joins the assistant
    message built from the item right before it, and reasoning rides on the next assistant message as
    ``reasoning_content`` (the vLLM/DeepSeek convention).
    """
    out: list[JSON] = []
    assistant: JSON | None = None  # the message a following function_call joins
    reasoning: list[str] = []
    # Images and files a tool returned: a tool message holds only text, and a user message may not sit
    # between the tool messages of one assistant turn, so they follow the run of tool messages.
    tool_media: list[JSON] = []
    for item in items:
        kind = item.WhichOneof("item")
        if kind != "function_call_output" and tool_media:
            out.append({"role": "user", "content": tool_media})
            tool_media = []
        if kind == "function_call":
            call = item.function_call
            tool_call = {"id": call.call_id, "type": "function",
                         "function": {"name": call.name, "arguments": call.arguments}}
            if assistant is None:
                assistant = _new_assistant(out, reasoning, None)
            if not assistant["content"]:
                assistant["content"] = None
            assistant.setdefault("tool_calls", []).append(tool_call)
            continue
        if kind == "message" and item.message.role == items_pb2.MESSAGE_ROLE_ASSISTANT:
            text, refusal = _assistant_content(item.message.content)
            assistant = _new_assistant(out, reasoning, text)
            if refusal:
                assistant["refusal"] = refusal
                if not text:
                    assistant["content"] = None
            continue
        assistant = None
        if kind == "reasoning":
            text = _reasoning_text(item.reasoning)
            if text:
                reasoning.append(text)
            continue
        if reasoning:
            # No assistant message follows: keep the reasoning as its own (empty) assistant turn.
            _new_assistant(out, reasoning, "")
        if kind == "message":
            out.append(_input_message(item.message, developer_role))
        elif kind == "function_call_output":
            output = item.function_call_output
            text, media = _tool_output(output.output)
            out.append({"role": "tool", "tool_call_id": output.call_id, "content": text})
            tool_media.extend(media)
        else:
            raise invalid(f"input items of type {kind!r} cannot be sent to a Chat Completions upstream",
                          "input", code="unsupported_input_item")
    if tool_media:
        out.append({"role": "user", "content": tool_media})
    if reasoning:
        _new_assistant(out, reasoning, "")
    return out


def _new_assistant(out: list[JSON], reasoning: list[str], text: str | None) -> JSON:
    msg: JSON = {"role": "assistant", "content": text}
    if reasoning:
        msg["reasoning_content"] = "\n\n".join(reasoning)
        reasoning.clear()
    out.append(msg)
    return msg


def _reasoning_text(item: items_pb2.ReasoningItem) -> str:
    # Raw reasoning is what the model wrote; a summary is the next best thing when only that came back.
    parts = item.content or item.summary
    return "\n\n".join(p.reasoning_text.text or p.summary_text.text or p.text.text for p in parts)


def _assistant_content(content: content_pb2.Content) -> tuple[str, str]:
    if content.WhichOneof("value") != "parts":
        return content.text, ""
    texts: list[str] = []
    refusals: list[str] = []
    for part in content.parts.parts:
        kind = part.WhichOneof("part")
        if kind == "refusal":
            refusals.append(part.refusal.refusal)
        elif kind in _TEXT_PARTS:
            texts.append(getattr(part, kind).text)
        else:
            raise invalid(f"assistant messages cannot carry {kind} content", "input",
                          code="unsupported_content")
    return "".join(texts), "".join(refusals)


def _input_message(msg: items_pb2.Message, developer_role: bool) -> JSON:
    role = _ROLE.get(msg.role, "user")
    if role == "user":
        if msg.content.WhichOneof("value") == "parts":
            return {"role": role, "content": [_user_part(p) for p in msg.content.parts.parts]}
        return {"role": role, "content": msg.content.text}
    if role == "developer" and not developer_role:
        role = "system"
    # Instructions as one string: every server accepts that, not all accept part lists here.
    return {"role": role, "content": message_text(msg)}


def _user_part(part: content_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": getattr(part, kind).text}
    if kind == "refusal":
        return {"type": "text", "text": part.refusal.refusal}
    if kind == "input_image":
        image = part.input_image
        if not image.HasField("image_url"):
            raise invalid("Chat Completions upstreams take images by URL, not by file id", "input",
                          code="unsupported_content")
        url: JSON = {"url": image.image_url}
        if image.detail:
            url["detail"] = _DETAIL[image.detail]
        return {"type": "image_url", "image_url": url}
    if kind == "input_file":
        src = part.input_file
        file: JSON = {}
        if src.HasField("file_data"):
            file["file_data"] = src.file_data
        elif src.HasField("file_url"):
            file["file_data"] = src.file_url  # OpenRouter's convention; OpenAI itself takes no URLs
        if src.HasField("filename"):
            file["filename"] = src.filename
        if src.HasField("file_id"):
            file["file_id"] = src.file_id
        return {"type": "file", "file": file}
    if kind == "input_audio":
        return {"type": "input_audio",
                "input_audio": {"data": part.input_audio.data, "format": part.input_audio.format}}
    if kind == "input_video":
        return {"type": "video_url", "video_url": {"url": part.input_video.video_url}}  # vLLM extension
    raise invalid("empty content part", "input")


def _tool_output(content: content_pb2.Content) -> tuple[str, list[JSON]]:
    if content.WhichOneof("value") != "parts":
        return content.text, []
    texts: list[str] = []
    media: list[JSON] = []
    for part in content.parts.parts:
        kind = part.WhichOneof("part")
        if kind in _TEXT_PARTS:
            texts.append(getattr(part, kind).text)
        else:
            media.append(_user_part(part))
    return "".join(texts), media


def struct_to_dict(struct: struct_pb2.Struct) -> JSON:
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind == "number_value":
        # Struct stores every number as a double; JSON Schema keywords like maxItems must stay integers.
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


# ---------------------------------------------------------------- response


def finish_reason(raw: str | None, saw_tool_calls: bool) -> FinishReason:
    reason = _FINISH.get(raw or "stop", "unknown")
    # Some servers (older vLLM, Ollama) say "stop" after emitting tool calls.
    return "tool_calls" if saw_tool_calls and reason == "stop" else reason


def logprobs_of(choice: JSON) -> tuple[TokenLogprob, ...]:
    """Token log probabilities of a choice (``logprobs.content``), when the upstream sent them."""
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not entries:
        return ()
    return tuple(
        TokenLogprob(
            token=e.get("token", ""), logprob=float(e.get("logprob", 0.0)), bytes=tuple(e.get("bytes") or ()),
            top=tuple((t.get("token", ""), float(t.get("logprob", 0.0)), tuple(t.get("bytes") or ()))
                      for t in e.get("top_logprobs") or ()),
        )
        for e in entries
    )


def usage_delta(usage: JSON) -> UsageDelta:
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return UsageDelta(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_tokens=prompt.get("cached_tokens") or 0,
        # OpenRouter's and OpenAI's name for prompt-cache writes.
        cache_write_tokens=prompt.get("cache_write_tokens") or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )


def parse_completion(data: Any) -> list[Delta]:
    """The deltas of a non-streaming ``chat.completion`` body, in the order a stream would give them."""
    if not isinstance(data, dict):
        raise protocol_error("the upstream's response is not a JSON object")
    if data.get("error") is not None:
        raise stream_error(data)
    choices = data.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    deltas: list[Delta] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning:
        deltas.append(ReasoningDelta(reasoning))
    if msg.get("content"):
        deltas.append(TextDelta(msg["content"], logprobs_of(choice)))
    if msg.get("refusal"):
        deltas.append(RefusalDelta(msg["refusal"]))
    calls = msg.get("tool_calls") or []
    for index, call in enumerate(calls):
        fn = call.get("function") or {}
        deltas.append(ToolCallDelta(index, call.get("id"), fn.get("name"), fn.get("arguments") or ""))
    if data.get("usage"):
        deltas.append(usage_delta(data["usage"]))
    deltas.append(Finish(finish_reason(choice.get("finish_reason"), bool(calls))))
    return deltas


# ---------------------------------------------------------------- errors


def _error_message(data: Any) -> tuple[str, str]:
    """(message, code) from the error bodies OpenAI, vLLM, llama.cpp and FastAPI servers send."""
    if not isinstance(data, dict):
        return "", ""
    err = data.get("error", data)
    if isinstance(err, str):
        return err, ""
    if not isinstance(err, dict):
        return "", ""
    message = err.get("message") or err.get("detail") or ""
    code = err.get("code") or err.get("type") or ""
    return (message if isinstance(message, str) else str(message)), str(code)


def stream_error(data: Any) -> UpstreamError:
    """An error the upstream reported inside a 200 response, after the stream started."""
    message, _ = _error_message(data)
    return UpstreamError(f"upstream error: {message or 'unknown error'}", retryable=False)


def status_error(status: int, body: bytes, headers: Any) -> ApiError:
    """The error for a non-2xx upstream response. ``headers`` is the response's header mapping."""
    try:
        message, code = _error_message(orjson.loads(body))
    except orjson.JSONDecodeError:
        message, code = body[:300].decode("utf-8", "replace").strip(), ""
    text = f"upstream returned HTTP {status}" + (f": {message}" if message else "")
    if status in (400, 413, 422) and (
        code in ("context_length_exceeded", "exceed_context_size_error")
        or "maximum context length" in message.lower()
    ):
        # Retryable: a fallback model with a larger window may take the same input.
        return UpstreamError(text, upstream_status=status, code="context_length_exceeded", retryable=True,
                             status=grpc.StatusCode.INVALID_ARGUMENT)
    if status == 429:
        return UpstreamError(text, upstream_status=status, code="upstream_rate_limited", retryable=True,
                             status=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=retry_after(headers))
    retryable = status in (408, 409) or status >= 500
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT if status in (400, 413, 422) else grpc.StatusCode.UNAVAILABLE
    return UpstreamError(text, upstream_status=status, retryable=retryable, status=grpc_status,
                         retry_after=retry_after(headers) if retryable else None)


def retry_after(headers: Any) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None
