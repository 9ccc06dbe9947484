"""Pure translation between a :class:`Turn` and a native (Open) Responses API upstream.

The request re-encodes the turn's protobuf items as Responses JSON with a small explicit encoder (the
edge's JSON codec belongs to the edge, not the service). Upstream events fold into deltas; the engine
re-sequences and re-ids everything, so upstream ids and sequence numbers are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2, tools_pb2
from switchboard.service.providers.base import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningOpaqueDelta,
    ReasoningSummaryDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
    UsageDelta,
)
from switchboard.service.providers.chat_translate import struct_to_dict
from switchboard.service.providers.http import interrupted, loads, protocol_error
from switchboard.shared.errors import UpstreamError, invalid

JSON = dict[str, Any]

_ROLE = {items_pb2.MESSAGE_ROLE_SYSTEM: "system", items_pb2.MESSAGE_ROLE_DEVELOPER: "developer",
         items_pb2.MESSAGE_ROLE_USER: "user", items_pb2.MESSAGE_ROLE_UNSPECIFIED: "user",
         items_pb2.MESSAGE_ROLE_ASSISTANT: "assistant"}
_PHASE = {items_pb2.MESSAGE_PHASE_COMMENTARY: "commentary", items_pb2.MESSAGE_PHASE_FINAL_ANSWER: "final_answer"}
_DETAIL = {content_pb2.IMAGE_DETAIL_LOW: "low", content_pb2.IMAGE_DETAIL_HIGH: "high",
           content_pb2.IMAGE_DETAIL_AUTO: "auto"}
_TOOL_MODE = {tools_pb2.TOOL_CHOICE_MODE_AUTO: "auto", tools_pb2.TOOL_CHOICE_MODE_NONE: "none",
              tools_pb2.TOOL_CHOICE_MODE_REQUIRED: "required"}
_EFFORT = {response_pb2.REASONING_EFFORT_NONE: "none", response_pb2.REASONING_EFFORT_MINIMAL: "minimal",
           response_pb2.REASONING_EFFORT_LOW: "low", response_pb2.REASONING_EFFORT_MEDIUM: "medium",
           response_pb2.REASONING_EFFORT_HIGH: "high", response_pb2.REASONING_EFFORT_XHIGH: "xhigh"}
_SUMMARY = {response_pb2.REASONING_SUMMARY_AUTO: "auto", response_pb2.REASONING_SUMMARY_CONCISE: "concise",
            response_pb2.REASONING_SUMMARY_DETAILED: "detailed"}
_VERBOSITY = {response_pb2.VERBOSITY_LOW: "low", response_pb2.VERBOSITY_MEDIUM: "medium",
              response_pb2.VERBOSITY_HIGH: "high"}
_TEXT_PARTS = frozenset(("input_text", "output_text", "text", "summary_text", "reasoning_text"))
# Failure codes OpenAI uses for transient trouble; other failures will happen again on a retry.
_TRANSIENT = frozenset(("server_error", "rate_limit_exceeded", "server_is_overloaded", "slow_down", "overloaded"))
_RAW_REASONING = frozenset(("response.reasoning.delta", "response.reasoning_text.delta"))


# ---------------------------------------------------------------- request


def build_body(turn: Turn) -> JSON:
    """The ``POST /responses`` body. ``store: false`` because Switchboard keeps the conversation itself."""
    body: JSON = {"model": turn.model, "input": build_input(turn.items), "stream": turn.stream, "store": False}
    for key in ("max_output_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(turn, key)
        if value is not None:
            body[key] = value
    if turn.user:
        body["safety_identifier"] = turn.user  # the spec's successor of `user`
    include: list[str] = []
    if turn.top_logprobs is not None:
        body["top_logprobs"] = turn.top_logprobs
        include.append("message.output_text.logprobs")
    _add_tools(body, turn)
    text = _text(turn.text)
    if text:
        body["text"] = text
    reasoning = _reasoning(turn.reasoning)
    if reasoning:
        body["reasoning"] = reasoning
    # With store: false, reasoning survives to the next turn only as encrypted_content. Non-reasoning
    # models reject the include, so it is asked for only when the turn reasons or replays reasoning.
    reasons = turn.reasoning is not None and reasoning.get("effort") != "none"
    if reasons or any(item.WhichOneof("item") == "reasoning" for item in turn.items):
        include.append("reasoning.encrypted_content")
    if include:
        body["include"] = include
    # top_k has no Responses field; OpenAI rejects unknown parameters, so it is not sent.
    return body


def _add_tools(body: JSON, turn: Turn) -> None:
    tools = turn.tools
    choice: Any = None
    if turn.tool_choice is not None:
        kind = turn.tool_choice.WhichOneof("choice")
        if kind == "mode":
            choice = _TOOL_MODE.get(turn.tool_choice.mode)
        elif kind == "function":
            choice = {"type": "function", "name": turn.tool_choice.function.name}
    if not tools:
        return
    body["tools"] = [_tool(tool) for tool in tools]
    if choice is not None:
        body["tool_choice"] = choice
    if turn.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = turn.parallel_tool_calls


def _tool(tool: tools_pb2.FunctionTool) -> JSON:
    out: JSON = {"type": "function", "name": tool.name}
    if tool.HasField("description"):
        out["description"] = tool.description
    if tool.HasField("parameters"):
        out["parameters"] = struct_to_dict(tool.parameters)
    if tool.HasField("strict"):
        out["strict"] = tool.strict  # unset stays unset: the upstream's default applies, as for the client
    return out


def _text(text: response_pb2.TextConfig | None) -> JSON:
    if text is None:
        return {}
    out: JSON = {}
    kind = text.format.WhichOneof("format") if text.HasField("format") else None
    if kind == "text":
        out["format"] = {"type": "text"}
    elif kind == "json_object":
        out["format"] = {"type": "json_object"}
    elif kind == "json_schema":
        js = text.format.json_schema
        fmt: JSON = {"type": "json_schema", "name": js.name, "schema": struct_to_dict(js.schema)}
        if js.HasField("description"):
            fmt["description"] = js.description
        if js.strict:
            fmt["strict"] = True
        out["format"] = fmt
    if text.verbosity in _VERBOSITY:
        out["verbosity"] = _VERBOSITY[text.verbosity]
    return out


def _reasoning(reasoning: response_pb2.ReasoningConfig | None) -> JSON:
    # Only effort and summary exist in the Responses API; max_tokens and enabled are other upstreams' knobs.
    out: JSON = {}
    if reasoning is not None:
        if reasoning.HasField("effort") and reasoning.effort in _EFFORT:
            out["effort"] = _EFFORT[reasoning.effort]
        if reasoning.HasField("summary") and reasoning.summary in _SUMMARY:
            out["summary"] = _SUMMARY[reasoning.summary]
    return out


def build_input(items: Iterable[items_pb2.Item]) -> list[JSON]:
    """Responses input items. Ids are left out: they are Switchboard's, unknown to the upstream."""
    out: list[JSON] = []
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "message":
            out.append(_message(item.message))
        elif kind == "function_call":
            call = item.function_call
            out.append({"type": "function_call", "call_id": call.call_id, "name": call.name,
                        "arguments": call.arguments})
        elif kind == "function_call_output":
            output = item.function_call_output
            value: Any = (output.output.text if output.output.WhichOneof("value") != "parts"
                          else [_input_part(p) for p in output.output.parts.parts])
            out.append({"type": "function_call_output", "call_id": output.call_id, "output": value})
        elif kind == "reasoning":
            out.append(_reasoning_item(item.reasoning))
        elif kind == "compaction":
            out.append({"type": "compaction", "encrypted_content": item.compaction.encrypted_content})
        elif kind == "item_reference":
            out.append({"type": "item_reference", "id": item.item_reference.id})
        elif kind == "other":
            out.append(struct_to_dict(item.other))  # an item type this version does not model, verbatim
        else:
            raise invalid("empty input item", "input")
    return out


def _message(msg: items_pb2.Message) -> JSON:
    role = _ROLE.get(msg.role, "user")
    out: JSON = {"type": "message", "role": role}
    if msg.content.WhichOneof("value") != "parts":
        out["content"] = msg.content.text
    elif role == "assistant":
        out["content"] = [_output_part(p) for p in msg.content.parts.parts]
    else:
        out["content"] = [_input_part(p) for p in msg.content.parts.parts]
    if role == "assistant" and msg.phase in _PHASE:
        out["phase"] = _PHASE[msg.phase]  # newer models degrade when phase is not sent back
    return out


def _output_part(part: content_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal.refusal}
    if kind in _TEXT_PARTS:
        # Assistant content must be output_text upstream, whatever part type the client used.
        return {"type": "output_text", "text": getattr(part, kind).text, "annotations": []}
    raise invalid(f"assistant messages cannot carry {kind} content", "input", code="unsupported_content")


def _input_part(part: content_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind in _TEXT_PARTS:
        return {"type": "input_text", "text": getattr(part, kind).text}
    if kind == "refusal":
        return {"type": "input_text", "text": part.refusal.refusal}
    if kind == "input_image":
        image = part.input_image
        out: JSON = {"type": "input_image", "detail": _DETAIL.get(image.detail, "auto")}
        if image.HasField("image_url"):
            out["image_url"] = image.image_url
        if image.HasField("file_id"):
            out["file_id"] = image.file_id
        return out
    if kind == "input_file":
        file = part.input_file
        out = {"type": "input_file"}
        for key in ("filename", "file_data", "file_url", "file_id"):
            if file.HasField(key):
                out[key] = getattr(file, key)
        return out
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": {"data": part.input_audio.data,
                                                       "format": part.input_audio.format}}
    if kind == "input_video":
        return {"type": "input_video", "video_url": part.input_video.video_url}
    raise invalid("empty content part", "input")


def _reasoning_item(item: items_pb2.ReasoningItem) -> JSON:
    out: JSON = {"type": "reasoning",
                 "summary": [{"type": "summary_text", "text": p.summary_text.text or p.text.text}
                             for p in item.summary]}
    if item.content:
        # Raw reasoning goes back to servers that produced it (gpt-oss on vLLM needs its chain of thought);
        # OpenAI's own models send none, so for them this key is absent.
        out["content"] = [{"type": "reasoning_text", "text": p.reasoning_text.text or p.text.text}
                          for p in item.content]
    if item.encrypted_content:
        out["encrypted_content"] = item.encrypted_content
    return out


# ---------------------------------------------------------------- response


def usage_delta(usage: JSON) -> UsageDelta:
    details_in = usage.get("input_tokens_details") or {}
    details_out = usage.get("output_tokens_details") or {}
    return UsageDelta(input_tokens=usage.get("input_tokens") or 0, output_tokens=usage.get("output_tokens") or 0,
                      cached_tokens=details_in.get("cached_tokens") or 0,
                      cache_write_tokens=details_in.get("cache_write_tokens") or 0,
                      reasoning_tokens=details_out.get("reasoning_tokens") or 0)


def end_deltas(response: JSON, saw_calls: bool) -> list[Delta]:
    """Usage and the finish of a completed or incomplete response."""
    deltas: list[Delta] = []
    usage = response.get("usage")
    if isinstance(usage, dict):
        deltas.append(usage_delta(usage))
    reason: FinishReason
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details") or {}
        # max_output_tokens, and reasons this version does not know, end as a length stop: incomplete either way.
        reason = "content_filter" if details.get("reason") == "content_filter" else "length"
    else:
        saw_calls = saw_calls or any(isinstance(i, dict) and i.get("type") == "function_call"
                                     for i in response.get("output") or ())
        reason = "tool_calls" if saw_calls else "stop"
    deltas.append(Finish(reason))
    return deltas


def item_deltas(item: Any, call_index: int) -> list[Delta]:
    """The deltas of one finished output item (non-streaming, or an item the upstream did not stream)."""
    if not isinstance(item, dict):
        return []
    kind = item.get("type")
    deltas: list[Delta] = []
    if kind == "message":
        for part in item.get("content") or ():
            ptype = part.get("type")
            if ptype == "output_text" and part.get("text"):
                deltas.append(TextDelta(part["text"]))
            elif ptype == "refusal" and part.get("refusal"):
                deltas.append(RefusalDelta(part["refusal"]))
    elif kind == "function_call":
        deltas.append(ToolCallDelta(call_index, item.get("call_id"), item.get("name"), item.get("arguments") or ""))
    elif kind == "reasoning":
        raw = "".join(p.get("text") or "" for p in item.get("content") or ())
        if raw:
            deltas.append(ReasoningDelta(raw))
        summary = "\n\n".join(p.get("text") or "" for p in item.get("summary") or ())
        if summary:
            deltas.append(ReasoningSummaryDelta(summary))
        if item.get("encrypted_content"):
            deltas.append(ReasoningOpaqueDelta(item["encrypted_content"]))
    # Hosted-tool items (web_search_call, ...) cannot come back: Switchboard never sends hosted tools.
    return deltas


def parse_response(data: Any) -> list[Delta]:
    """The deltas of a non-streaming Response object."""
    if not isinstance(data, dict):
        raise protocol_error("the upstream's response is not a JSON object")
    status = data.get("status")
    if status == "failed" or (data.get("error") and status != "completed"):
        raise failed_error(data)
    if status not in ("completed", "incomplete"):
        raise protocol_error(f"the upstream's response is not finished (status {status!r})")
    deltas: list[Delta] = []
    calls = 0
    for item in data.get("output") or ():
        deltas += item_deltas(item, calls)
        if isinstance(item, dict) and item.get("type") == "function_call":
            calls += 1
    return deltas + end_deltas(data, calls > 0)


class EventStream:
    """Folds streamed Responses events into deltas, one event at a time."""

    __slots__ = ("_calls", "_streamed", "done")

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # output_index -> tool call ordinal
        self._streamed: set[int] = set()  # output indexes whose content came as deltas
        self.done = False  # a terminal event was seen

    def _call(self, output_index: int) -> int:
        ordinal = self._calls.get(output_index)
        if ordinal is None:
            ordinal = self._calls[output_index] = len(self._calls)
        return ordinal

    def feed_sse(self, event: str, data: str) -> list[Delta]:
        # Open Responses servers end with [DONE]; OpenAI just closes after the terminal event.
        return self.feed(loads(data)) if data and data != "[DONE]" else []

    def feed(self, event: JSON) -> list[Delta]:
        kind = event.get("type")
        delta = event.get("delta")
        if kind == "response.output_text.delta":  # the hot path first
            self._streamed.add(event.get("output_index", -1))
            return [TextDelta(delta)] if delta else []
        if kind == "response.function_call_arguments.delta":
            index = event.get("output_index", -1)
            self._streamed.add(index)
            return [ToolCallDelta(self._call(index), arguments=delta)] if delta else []
        if kind in _RAW_REASONING:
            self._streamed.add(event.get("output_index", -1))
            return [ReasoningDelta(delta)] if delta else []
        if kind == "response.reasoning_summary_text.delta":
            self._streamed.add(event.get("output_index", -1))
            return [ReasoningSummaryDelta(delta)] if delta else []
        if kind == "response.refusal.delta":
            self._streamed.add(event.get("output_index", -1))
            return [RefusalDelta(delta)] if delta else []
        if kind == "response.reasoning_summary_part.added" and (event.get("summary_index") or 0) > 0:
            # The engine keeps one summary part per item: later parts are set apart as paragraphs.
            return [ReasoningSummaryDelta("\n\n")]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                index = event.get("output_index", -1)
                return [ToolCallDelta(self._call(index), item.get("call_id"), item.get("name"))]
            return []
        if kind == "response.output_item.done":
            index = event.get("output_index", -1)
            item = event.get("item")
            if index in self._streamed:
                # A streamed reasoning item's proof comes only with the finished item.
                if isinstance(item, dict) and item.get("type") == "reasoning" and item.get("encrypted_content"):
                    return [ReasoningOpaqueDelta(item["encrypted_content"])]
                return []
            # Some servers send whole items without deltas: relay the finished item instead.
            if isinstance(item, dict) and item.get("type") == "function_call":
                return item_deltas(item, self._call(index))
            return item_deltas(item, -1)
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = event.get("response")
            return end_deltas(response if isinstance(response, dict) else {}, bool(self._calls))
        if kind == "response.failed":
            response = event.get("response")
            raise failed_error(response if isinstance(response, dict) else {})
        if kind == "error":
            raise error_event(event)
        # created/in_progress, part and *.done events, and custom events carry nothing new.
        return []

    def end(self) -> list[Delta]:
        if not self.done:
            raise interrupted()
        return []


# ---------------------------------------------------------------- errors


def _error(err: Any) -> UpstreamError:
    err = err if isinstance(err, dict) else {}
    code = str(err.get("code") or err.get("type") or "")
    message = str(err.get("message") or code or "the response failed")
    if code == "context_length_exceeded":
        # Retryable: a fallback model with a larger window may take the same input.
        return UpstreamError(f"upstream error: {message}", code="context_length_exceeded", retryable=True,
                             status=grpc.StatusCode.INVALID_ARGUMENT)
    return UpstreamError(f"upstream error: {message}", retryable=code in _TRANSIENT)


def failed_error(response: JSON) -> UpstreamError:
    """A ``failed`` response (``response.failed`` event, or a failed non-streaming body)."""
    return _error(response.get("error"))


def error_event(event: JSON) -> UpstreamError:
    # The spec nests {type, code, message, param} under "error"; OpenAI puts them on the event itself.
    return _error(event.get("error") if isinstance(event.get("error"), dict) else event)
