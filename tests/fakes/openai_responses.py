"""Protocol-faithful fake native Responses API upstream (``POST /v1/responses``) for tests and benchmarks.

Events, order and framing follow the Open Responses spec (``event:`` + ``data:`` frames, every event with
``type`` and ``sequence_number``, item → part → delta → done nesting, one terminal event, then
``data: [DONE]``). Behaviour is selected by the request's ``model`` (see ``_plan``). Run it with
``python -m tests.fakes.openai_responses --host 127.0.0.1 --port 0``; it prints ``LISTENING http://host:port``.
The HTTP plumbing is shared with :mod:`tests.fakes.anthropic`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.anthropic import (
    RawEndpoint,
    control_routes,
    deliver,
    read_request,
    send_json,
    serve,
    slow_delay,
)

JSON = dict[str, Any]

_FAILS: dict[str, tuple[int, str, str | None, str | None, str]] = {
    "fail-500": (500, "server_error", None, None, "The server had an error while processing your request."),
    "fail-429": (429, "requests", "rate_limit_exceeded", None, "Rate limit reached for requests (fake fail-429)."),
    "overloaded": (503, "server_error", "server_is_overloaded", None, "The server is overloaded. Try again later."),
    "context-too-long": (400, "invalid_request_error", "context_length_exceeded", "input",
                         "Your input exceeds the context window of this model."),
}
_KEEP_HEADERS = (b"authorization", b"content-type")
_DONE = b"data: [DONE]\n\n"


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if text else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict)) if isinstance(content, list) else ""


def _error(status: int, etype: str, code: str | None, param: str | None, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": etype, "param": param, "code": code}})


def _input(body: JSON) -> list[Any]:
    raw = body.get("input")
    return [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw or []


def _plan(body: JSON, model: str) -> tuple[list[JSON], str | None]:
    """The output items, each with its text as a list of delta pieces, and the incomplete reason."""
    items = _input(body)
    last = items[-1] if items and isinstance(items[-1], dict) else {}
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    if model == "refusal":
        return [{"type": "message", "parts": [("refusal", ["I'm sorry, ", "I can't help with that."])]}], None
    if model == "tool-call" and last.get("type") == "function_call_output":
        text = _words("tool said: " + _text(last.get("output")))
        return [{"type": "message", "parts": [("output_text", text)]}], None
    if model == "tool-call" and tools:
        return [{"type": "function_call", "call_id": "call_" + secrets.token_hex(12), "name": tools[0]["name"],
                 "pieces": ['{"x"', ": 1}"]}], None
    user = next((i for i in reversed(items) if isinstance(i, dict) and i.get("role") == "user"), {})
    out: list[JSON] = []
    if model == "reasoning":
        reasoning = body.get("reasoning") or {}
        include = body.get("include") or []
        out.append({"type": "reasoning", "content": [["thinking", " hard"]],
                    "summary": [["Thinking ", "hard."], ["Done."]] if reasoning.get("summary") else [],
                    "encrypted_content": "gAAAA" + secrets.token_hex(16)
                    if "reasoning.encrypted_content" in include else None})
    pieces = _words("echo: " + _text(user.get("content")))
    limit = 2 if model == "max-tokens" else body.get("max_output_tokens")
    reason = None
    if isinstance(limit, int) and (len(pieces) > limit or model == "max-tokens"):
        pieces, reason = pieces[:limit], "max_output_tokens"
    out.append({"type": "message", "parts": [("output_text", pieces)]})
    return out, reason


def _final(plan: JSON, item_id: str) -> JSON:
    """A planned item as it appears in output_item.done and the final response."""
    kind = plan["type"]
    if kind == "function_call":
        return {"type": kind, "id": item_id, "call_id": plan["call_id"], "name": plan["name"],
                "arguments": "".join(plan["pieces"]), "status": "completed"}
    if kind == "reasoning":
        item = {"type": kind, "id": item_id,
                "summary": [{"type": "summary_text", "text": "".join(p)} for p in plan["summary"]],
                "content": [{"type": "reasoning_text", "text": "".join(p)} for p in plan["content"]]}
        return item | ({"encrypted_content": plan["encrypted_content"]} if plan["encrypted_content"] else {})
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [_part(k, "".join(p)) for k, p in plan["parts"]]}


def _part(kind: str, text: str) -> JSON:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": kind, "text": text} | ({"annotations": [], "logprobs": []} if kind == "output_text" else {})


def _tool(tool: JSON) -> JSON:
    """A request tool as the response echoes it: every field present, strict defaulting to true."""
    return {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


def _echo_reasoning(reasoning: Any) -> JSON | None:
    if not isinstance(reasoning, dict):
        return None
    return {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}


def _resource(body: JSON, resp_id: str, status: str, output: list[JSON], usage: JSON | None,
              reason: str | None = None, error: JSON | None = None) -> JSON:
    """A full ResponseResource snapshot (every field the spec requires)."""
    now = int(time.time())
    return {
        "id": resp_id, "object": "response", "created_at": now, "completed_at": now if status == "completed" else None,
        "status": status, "incomplete_details": {"reason": reason} if reason else None, "model": body["model"],
        "previous_response_id": None, "instructions": body.get("instructions"), "output": output, "error": error,
        "tools": [_tool(t) for t in body.get("tools") or ()], "tool_choice": body.get("tool_choice") or "auto",
        "truncation": "disabled", "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "text": body.get("text") or {"format": {"type": "text"}}, "top_p": body.get("top_p", 1.0),
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_logprobs": body.get("top_logprobs", 0),
        "temperature": body.get("temperature", 1.0), "reasoning": _echo_reasoning(body.get("reasoning")),
        "usage": usage, "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
        "store": body.get("store", True), "background": False, "service_tier": "default", "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


def _usage(body: JSON, plans: list[JSON]) -> JSON:
    prompt = sum(len(_text(i.get("content") or i.get("output")).split()) for i in _input(body) if isinstance(i, dict))
    reasoning = sum(len(p) for plan in plans if plan["type"] == "reasoning" for p in plan["content"] + plan["summary"])
    output = reasoning + sum(len(p) for plan in plans if plan["type"] == "message" for _, p in plan["parts"]) + sum(
        len(plan["pieces"]) for plan in plans if plan["type"] == "function_call")
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + output}


def _events(body: JSON, model: str, plans: list[JSON], reason: str | None) -> list[JSON]:
    resp_id = "resp_" + secrets.token_hex(16)
    events: list[JSON] = [{"type": "response.created", "response": _resource(body, resp_id, "in_progress", [], None)},
                          {"type": "response.in_progress",
                           "response": _resource(body, resp_id, "in_progress", [], None)}]
    if model == "failed":
        error = {"code": "server_error", "message": "The model failed to generate a response (fake failed)."}
        return events + [{"type": "response.failed", "response": _resource(body, resp_id, "failed", [], None,
                                                                            error=error)}]
    output: list[JSON] = []
    for index, plan in enumerate(plans):
        prefix = {"message": "msg_", "function_call": "fc_", "reasoning": "rs_"}[plan["type"]]
        item = _final(plan, prefix + secrets.token_hex(16))
        ref = {"item_id": item["id"], "output_index": index}
        if plan["type"] == "function_call":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": item | {"arguments": "", "status": "in_progress"}})
            events += [{"type": "response.function_call_arguments.delta", **ref, "delta": p} for p in plan["pieces"]]
            events.append({"type": "response.function_call_arguments.done", **ref, "arguments": item["arguments"]})
        elif plan["type"] == "reasoning":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {"type": "reasoning", "id": item["id"], "summary": [], "content": []}})
            for si, pieces in enumerate(plan["summary"]):
                part = {**ref, "summary_index": si}
                events.append({"type": "response.reasoning_summary_part.added", **part,
                               "part": {"type": "summary_text", "text": ""}})
                events += [{"type": "response.reasoning_summary_text.delta", **part, "delta": p} for p in pieces]
                text = "".join(pieces)
                events += [{"type": "response.reasoning_summary_text.done", **part, "text": text},
                           {"type": "response.reasoning_summary_part.done", **part,
                            "part": {"type": "summary_text", "text": text}}]
            for ci, pieces in enumerate(plan["content"]):
                events += _part_events(ref | {"content_index": ci}, "reasoning_text", pieces)
        else:
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": item | {"status": "in_progress", "content": []}})
            for ci, (kind, pieces) in enumerate(plan["parts"]):
                events += _part_events(ref | {"content_index": ci}, kind, pieces)
        if reason is not None and index == len(plans) - 1:
            item["status"] = "incomplete"
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        output.append(item)
        if model == "error-event":
            return events + [{"type": "error", "error": {"type": "server_error", "code": "server_error",
                                                         "message": "Something broke mid-stream.", "param": None}}]
    status = "incomplete" if reason else "completed"
    final = _resource(body, resp_id, status, output, _usage(body, plans), reason)
    return events + [{"type": f"response.{status}", "response": final}]


def _part_events(ref: JSON, kind: str, pieces: list[str]) -> list[JSON]:
    """content_part.added → deltas → <kind>.done → content_part.done for one part."""
    name = {"output_text": "output_text", "refusal": "refusal", "reasoning_text": "reasoning"}[kind]
    text = "".join(pieces)
    done: JSON = {"refusal": text} if kind == "refusal" else {"text": text}
    return [{"type": "response.content_part.added", **ref, "part": _part(kind, "")},
            *({"type": f"response.{name}.delta", **ref, "delta": p} for p in pieces),
            {"type": f"response.{name}.done", **ref, **done},
            {"type": "response.content_part.done", **ref, "part": _part(kind, text)}]


def _frames(events: list[JSON]) -> list[bytes]:
    frames = []
    for seq, event in enumerate(events):
        event["sequence_number"] = seq
        frames.append(b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
    return frames + [_DONE]


async def responses_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Raw ASGI endpoint for POST /v1/responses (raw to control the stream and see disconnects)."""
    request = await read_request(scope, receive, _KEEP_HEADERS)
    if request is None:
        return
    headers, body = request
    if not headers.get("authorization", "").startswith("Bearer "):
        await send_json(send, *_error(401, "invalid_request_error", "invalid_api_key", None, "No API key provided."))
        return
    if not isinstance(body, dict) or not isinstance(body.get("input"), str | list):
        await send_json(send, *_error(400, "invalid_request_error", None, "input", "Missing required parameter."))
        return
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or limit < 16):
        await send_json(send, *_error(400, "invalid_request_error", "integer_below_min_value", "max_output_tokens",
                                      "Invalid 'max_output_tokens': integer below minimum value. Expected a value "
                                      ">= 16."))
        return
    model = str(body.get("model") or "echo")
    if model in _FAILS:
        status, payload = _error(*_FAILS[model])
        await send_json(send, status, payload, [(b"retry-after", b"1")] if status == 429 else None)
        return
    plans, reason = _plan(body, model)
    events = _events(body, model, plans, reason)
    delay = slow_delay(model)
    if body.get("stream") is not True:
        if events[-1]["type"] == "error":  # no stream to break into: the failure is a plain 500
            await send_json(send, *_error(*_FAILS["fail-500"]))
            return
        await deliver(receive, send, [orjson.dumps(events[-1]["response"])], False, delay, None)
        return
    await deliver(receive, send, _frames(events), True, delay, 5 if model == "drop-mid-stream" else None)


def create_app() -> Starlette:
    return Starlette(routes=[Route("/v1/responses", RawEndpoint(responses_app), methods=["POST"]), *control_routes()])


if __name__ == "__main__":
    serve(create_app(), "Fake native Responses API upstream")
