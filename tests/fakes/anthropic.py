"""Protocol-faithful fake Anthropic Messages API upstream (``POST /v1/messages``) for tests and benchmarks.

Behaviour is selected by the request's ``model`` (see ``_build_reply``); requests the real API rejects
(no ``max_tokens``, a thinking budget not below it, unsigned thinking blocks, empty text blocks) get its
400. Run it with ``python -m tests.fakes.anthropic --host 127.0.0.1 --port 0``; it prints
``LISTENING http://host:port``. ``GET /_requests`` lists the recorded bodies and headers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import re
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

JSON = dict[str, Any]

REQUESTS: list[JSON] = []
STATS: dict[str, int] = {"cancelled": 0, "completed": 0}
_FAILS: dict[str, tuple[int, str, str]] = {
    "fail-500": (500, "api_error", "Internal server error"),
    "fail-429": (429, "rate_limit_error", "This request would exceed your rate limit (fake fail-429)."),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "prompt-too-long": (400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
}
_KEEP_HEADERS = (b"x-api-key", b"anthropic-version", b"anthropic-beta", b"content-type")
_WORD = re.compile(r"\s*\S+\s*")
_JSON_CT = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class Drop(Exception):
    """Raised inside the stream to make uvicorn abort the connection mid-body."""


def _words(text: str) -> list[str]:
    return _WORD.findall(text) or ([text] if text else [])


def _text(content: Any) -> str:
    """The text of a message's content; a tool_result counts with the text inside it."""
    if isinstance(content, str):
        return content
    out: list[str] = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "text":
            out.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            out.append(_text(block.get("content", "")))
    return "".join(out)


def _error(status: int, etype: str, message: str) -> tuple[int, bytes]:
    body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_" + secrets.token_hex(12)}
    return status, orjson.dumps(body)


def _invalid(body: JSON) -> str | None:
    """The message of the 400 the real API would answer ``body`` with, if any."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if content == [] or content == "":
            return f"messages.{i}: all messages must have non-empty content"
        for j, block in enumerate(content if isinstance(content, list) else ()):
            if block.get("type") == "thinking" and not isinstance(block.get("signature"), str):
                return f"messages.{i}.content.{j}.thinking.signature: Field required"
            if block.get("type") == "text" and not block.get("text"):
                return "messages: text content blocks must be non-empty"
    return None


class _Reply:
    __slots__ = ("blocks", "cache_read", "cache_write", "input_tokens", "stop")

    def __init__(self) -> None:
        # ("thinking", pieces, signature) | ("text", pieces) | ("tool_use", id, name)
        self.blocks: list[tuple[Any, ...]] = []
        self.stop = "end_turn"
        self.input_tokens = self.cache_read = self.cache_write = 0

    @property
    def output_tokens(self) -> int:
        return sum(len(b[1]) if b[0] != "tool_use" else 5 for b in self.blocks)


def _build_reply(body: JSON, model: str) -> _Reply:
    r = _Reply()
    messages: list[Any] = body["messages"]
    r.input_tokens = len(_text(body.get("system") or "").split()) + sum(
        len(_text(m.get("content")).split()) for m in messages if isinstance(m, dict))
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    content = last.get("content")
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
        if isinstance(content, list) else []
    tools = body.get("tools")
    if model == "refusal":
        r.stop = "refusal"
        return r
    if model == "cached":
        r.cache_read, r.cache_write = 3, 2
    if model == "tool-call" and results:
        r.blocks.append(("text", _words("tool said: " + _text(results[-1].get("content", "")))))
    elif model == "tool-call" and isinstance(tools, list) and tools:
        r.blocks += [("text", ["Let me ", "check."]), ("tool_use", "toolu_" + secrets.token_hex(12), tools[0]["name"])]
        r.stop = "tool_use"
        return r
    else:
        thinking = body.get("thinking")
        if model == "reasoning" and isinstance(thinking, dict) and thinking.get("type") == "enabled":
            r.blocks.append(("thinking", ["thinking", " hard"], base64.b64encode(secrets.token_bytes(48)).decode()))
        r.blocks.append(("text", _words("echo: " + _text(content))))
    text = r.blocks[-1][1]
    limit = 2 if model == "max-tokens" else body["max_tokens"]
    if len(text) > limit or model == "max-tokens":
        r.blocks[-1] = ("text", text[:limit])
        r.stop = "max_tokens"
    return r


def _usage(r: _Reply, output_tokens: int) -> JSON:
    return {"input_tokens": r.input_tokens, "cache_creation_input_tokens": r.cache_write,
            "cache_read_input_tokens": r.cache_read, "output_tokens": output_tokens, "service_tier": "standard"}


def _message(r: _Reply, model: str, msg_id: str, final: bool) -> JSON:
    content: list[JSON] = []
    for block in r.blocks if final else ():
        if block[0] == "thinking":
            content.append({"type": "thinking", "thinking": "".join(block[1]), "signature": block[2]})
        elif block[0] == "text":
            content.append({"type": "text", "text": "".join(block[1])})
        else:
            content.append({"type": "tool_use", "id": block[1], "name": block[2], "input": {"x": 1}})
    usage = _usage(r, r.output_tokens if final else 1)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": r.stop if final else None, "stop_sequence": None, "usage": usage}


def _sse(event: JSON) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _stream(r: _Reply, model: str, error_after: int | None = None) -> list[bytes]:
    msg_id = "msg_" + secrets.token_hex(12)
    parts = [_sse({"type": "message_start", "message": _message(r, model, msg_id, final=False)})]
    for index, block in enumerate(r.blocks):
        if block[0] == "thinking":
            start: JSON = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in block[1]]
            deltas.append({"type": "signature_delta", "signature": block[2]})
        elif block[0] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in block[1]]
        else:
            start = {"type": "tool_use", "id": block[1], "name": block[2], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", '{"x": ', "1}")]
        parts.append(_sse({"type": "content_block_start", "index": index, "content_block": start}))
        if index == 0:
            parts.append(_sse({"type": "ping"}))
        parts += [_sse({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        if error_after is not None and len(parts) >= error_after:
            return parts + [_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
        parts.append(_sse({"type": "content_block_stop", "index": index}))
    parts.append(_sse({"type": "message_delta", "delta": {"stop_reason": r.stop, "stop_sequence": None},
                       "usage": {"output_tokens": r.output_tokens}}))
    parts.append(_sse({"type": "message_stop"}))
    return parts


async def send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON_CT, (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def deliver(receive: Receive, send: Send, parts: list[bytes], stream: bool, delay: float,
                   drop: int | None) -> None:
    """Sends the reply; a client that disconnects while we wait cancels us and counts as cancelled."""
    task = asyncio.current_task()
    assert task is not None
    state = {"finished": False, "disconnected": False}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state["finished"]:
            state["disconnected"] = True
            task.cancel()

    watcher = asyncio.ensure_future(watch()) if delay else None
    try:
        await asyncio.sleep(delay)
        if not stream:
            state["finished"] = True
            await send_json(send, 200, parts[0])
        else:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            for i, part in enumerate(parts):
                if i == drop:
                    raise Drop("drop-mid-stream")
                if delay and i:
                    await asyncio.sleep(delay / 10)
                state["finished"] = i == len(parts) - 1
                await send({"type": "http.response.body", "body": part, "more_body": not state["finished"]})
        STATS["completed"] += 1
    except asyncio.CancelledError:
        if not state["disconnected"]:
            raise
        task.uncancel()
        STATS["cancelled"] += 1
    finally:
        if watcher is not None:
            watcher.cancel()


async def read_request(scope: Scope, receive: Receive, keep: tuple[bytes, ...]) -> tuple[dict[str, str], Any] | None:
    """(kept headers, parsed JSON body or None), recorded for ``GET /_requests``; None if the client left."""
    raw = bytearray()
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        raw += msg.get("body", b"")
        if not msg.get("more_body", False):
            break
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in keep}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    REQUESTS.append({"headers": headers, "body": body})
    return headers, body


def slow_delay(model: str) -> float:
    return int(model[5:]) / 1000 if model.startswith("slow-") and model[5:].isdigit() else 0.0


async def messages_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Raw ASGI endpoint for POST /v1/messages (raw to control the stream and see disconnects)."""
    request = await read_request(scope, receive, _KEEP_HEADERS)
    if request is None:
        return
    headers, body = request
    if "x-api-key" not in headers:
        await send_json(send, *_error(401, "authentication_error", "x-api-key header is required"))
        return
    problem = "Request body is not a JSON object." if not isinstance(body, dict) else _invalid(body)
    if problem is not None or not isinstance(body, dict):
        await send_json(send, *_error(400, "invalid_request_error", problem or ""))
        return
    model = str(body.get("model") or "echo")
    if model in _FAILS:
        status, payload = _error(*_FAILS[model])
        await send_json(send, status, payload, [(b"retry-after", b"1")] if status == 429 else None)
        return
    reply = _build_reply(body, model)
    delay = slow_delay(model)
    if body.get("stream") is not True:
        await deliver(receive, send, [orjson.dumps(_message(reply, model, "msg_" + secrets.token_hex(12), True))],
                      False, delay, None)
        return
    parts = _stream(reply, model, error_after=4 if model == "stream-error" else None)
    await deliver(receive, send, parts, True, delay, 5 if model == "drop-mid-stream" else None)


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


async def _requests(request: Request) -> Response:
    if request.method == "DELETE":
        REQUESTS.clear()
    return _json(REQUESTS)


async def _stats(request: Request) -> Response:
    if request.method == "DELETE":
        STATS.update(cancelled=0, completed=0)
    return _json(STATS)


class RawEndpoint:
    """Starlette hands a plain function a Request; an object with ``__call__`` gets raw ASGI."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def control_routes() -> list[Route]:
    return [Route("/_requests", _requests, methods=["GET", "DELETE"]),
            Route("/_stats", _stats, methods=["GET", "DELETE"])]


def create_app() -> Starlette:
    return Starlette(routes=[Route("/v1/messages", RawEndpoint(messages_app), methods=["POST"]), *control_routes()])


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            sys.stdout.write(f"LISTENING {self.url}\n")
            sys.stdout.flush()


def serve(app: Starlette, description: str, argv: list[str] | None = None) -> None:
    """Binds (port 0 picks a free one), announces the URL on stdout, and serves until terminated."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    # The deliberate mid-stream drop is not an error worth a traceback.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: not (record.exc_info and isinstance(record.exc_info[1], Drop)))
    _Server(config, f"http://{args.host}:{sock.getsockname()[1]}").run(sockets=[sock])


if __name__ == "__main__":
    serve(create_app(), "Fake Anthropic Messages API upstream")
