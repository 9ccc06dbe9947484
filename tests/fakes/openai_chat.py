"""Protocol-faithful fake OpenAI Chat Completions upstream for e2e tests and benchmarks.

Behaviour is selected by the request's ``model`` (see ``_plan``). Run it with
``python -m tests.fakes.openai_chat --host 127.0.0.1 --port 0``; it prints ``LISTENING http://host:port``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import socket
import sys
import time
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
MODELS = ("echo", "fixed-200", "fail-500", "fail-429", "fail-400", "drop-mid-stream", "slow-300",
          "tool-call", "tool-each", "reasoning", "hang", "stall-mid-stream", "trickle-500")
_FAILS: dict[str, tuple[int, str, str | None, str]] = {
    "fail-500": (500, "server_error", None, "The server had an error while processing your request."),
    "fail-429": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests (fake fail-429)."),
    "fail-400": (400, "invalid_request_error", None, "Invalid request (fake fail-400)."),
}
_KEEP_HEADERS = (b"authorization", b"traceparent")
_WORD = re.compile(r"\s*\S+\s*")
_DONE = b"data: [DONE]\n\n"
_FP = "fp_switchboard_fake"
_JSON_CT = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class _Drop(Exception):
    """Raised inside the stream to make uvicorn abort the connection mid-body."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
        )
    return ""


def _words(text: str) -> list[str]:
    return _WORD.findall(text) or ([text] if text else [])


def _usage(prompt: int, completion: int, reasoning: int = 0) -> JSON:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _error(status: int, etype: str, code: str | None, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}})


class _Reply:
    __slots__ = ("arguments", "content", "finish", "reasoning", "tool", "usage")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool: tuple[str, str] | None = None  # (call id, function name)
        self.arguments = '{"x": 1}'
        self.finish = "stop"
        self.usage: JSON = {}


def _tool_name(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return None
    for t in tools:
        if isinstance(t, dict):
            fn = t.get("function")
            name = fn.get("name") if isinstance(fn, dict) else t.get("name")
            if isinstance(name, str):
                return name
    return None


def _drip(model: str) -> tuple[int, int] | None:
    """``drip-N-MS``: N content deltas of "tok ", every stream part MS milliseconds after the one before."""
    parts = model.split("-")
    if len(parts) == 3 and parts[0] == "drip" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


def _schema_arguments(schema: Any) -> str:
    """Arguments that fit a JSON Schema: 2 for integers, 30 for numbers, "hi" for strings."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    values = {"integer": 2, "number": 30, "string": "hi", "boolean": True}
    return orjson.dumps({name: values.get(str(p.get("type")), "hi") for name, p in (properties or {}).items()
                         if isinstance(p, dict)}).decode()


def _next_tool(body: JSON, messages: list[Any]) -> JSON | None:
    """`tool-each`: the first declared function not called yet in this conversation (`mcp__` ones first)."""
    called = {c.get("function", {}).get("name") for m in messages if isinstance(m, dict)
              for c in (m.get("tool_calls") or []) if isinstance(c, dict)}
    functions = [t.get("function") for t in body.get("tools") or [] if isinstance(t, dict)]
    ordered = sorted((f for f in functions if isinstance(f, dict)),
                     key=lambda f: not str(f.get("name", "")).startswith("mcp__"))
    return next((f for f in ordered if f.get("name") not in called), None)


def _build_reply(body: JSON, model: str) -> _Reply:
    r = _Reply()
    msgs = body.get("messages")
    messages: list[Any] = msgs if isinstance(msgs, list) else []
    prompt = sum(len(_text(m.get("content")).split()) for m in messages if isinstance(m, dict))
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    tool_name = _tool_name(body.get("tools"))
    if model.startswith("fixed-") and model[6:].isdigit():
        r.content = ["tok "] * int(model[6:])
    elif (drip := _drip(model)) is not None:
        r.content = ["tok "] * drip[0]
    elif model == "tool-call" and last.get("role") == "tool":
        r.content = _words("tool said: " + _text(last.get("content")))
    elif model == "tool-call" and tool_name is not None:
        r.tool, r.finish = ("call_" + secrets.token_hex(12), tool_name), "tool_calls"
        r.usage = _usage(prompt, 3)
        return r
    elif model == "tool-each" and (function := _next_tool(body, messages)) is not None:
        r.tool, r.finish = ("call_" + secrets.token_hex(12), str(function["name"])), "tool_calls"
        r.arguments = _schema_arguments(function.get("parameters"))
        r.usage = _usage(prompt, 3)
        return r
    elif model == "tool-each":
        results = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        r.content = _words("tool said: " + " | ".join(results))
    else:
        user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {})
        r.content = _words("echo: " + _text(user.get("content")))
    if model == "reasoning":
        r.reasoning = ["thinking", " hard"]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(r.content):
        r.content, r.finish = r.content[:limit], "length"
    r.usage = _usage(prompt, len(r.content) + len(r.reasoning), len(r.reasoning))
    return r


def _completion(r: _Reply, model: str) -> bytes:
    msg: JSON = {"role": "assistant", "content": "".join(r.content) if r.tool is None else None,
                 "refusal": None, "annotations": []}
    if r.reasoning:
        msg["reasoning_content"] = "".join(r.reasoning)
    if r.tool is not None:
        msg["tool_calls"] = [{"id": r.tool[0], "type": "function",
                              "function": {"name": r.tool[1], "arguments": r.arguments}}]
    return orjson.dumps({
        "id": "chatcmpl-" + secrets.token_hex(14), "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": r.finish}],
        "usage": r.usage, "service_tier": "default", "system_fingerprint": _FP,
    })


def _logprobs(piece: str, top: int) -> JSON:
    """Deterministic log probabilities: -0.1 per character, alternatives one step less likely each."""
    def entry(token: str, rank: int) -> JSON:
        return {"token": token, "logprob": -0.1 * len(token) - rank, "bytes": list(token.encode())}
    return {"content": [{**entry(piece, 0), "top_logprobs": [entry(piece, i) for i in range(top)]}], "refusal": None}


def _stream(r: _Reply, model: str, include_usage: bool, top_logprobs: int | None = None) -> list[bytes]:
    base: JSON = {"id": "chatcmpl-" + secrets.token_hex(14), "object": "chat.completion.chunk",
                  "created": int(time.time()), "model": model, "service_tier": "default",
                  "system_fingerprint": _FP}
    if include_usage:
        base["usage"] = None

    def chunk(delta: JSON, finish: str | None = None) -> bytes:
        wanted = top_logprobs is not None and delta.get("content")
        logprobs = _logprobs(delta["content"], top_logprobs or 0) if wanted else None
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    parts = [chunk({"role": "assistant", "content": "", "refusal": None})]
    parts += [chunk({"reasoning_content": piece}) for piece in r.reasoning]
    if r.tool is not None:
        head = {"index": 0, "id": r.tool[0], "type": "function", "function": {"name": r.tool[1], "arguments": ""}}
        parts.append(chunk({"tool_calls": [head]}))
        for frag in (r.arguments[:4], r.arguments[4:]):
            parts.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
    cache: dict[str, bytes] = {}
    for piece in r.content:
        enc = cache.get(piece)
        if enc is None:
            enc = cache[piece] = chunk({"content": piece})
        parts.append(enc)
    parts.append(chunk({}, r.finish))
    if include_usage:
        parts.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": r.usage}) + b"\n\n")
    parts.append(_DONE)
    return parts


class _Flags:
    __slots__ = ("disconnected", "finished")

    def __init__(self) -> None:
        self.finished = False
        self.disconnected = False


async def _watch(receive: Receive, task: asyncio.Task[Any], flags: _Flags) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            if not flags.finished:
                flags.disconnected = True
                task.cancel()
            return


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON_CT, (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _deliver(receive: Receive, send: Send, parts: list[bytes], stream: bool,
                   delay: float, gap: float, drop: int | None) -> None:
    task = asyncio.current_task()
    assert task is not None
    flags = _Flags()
    watcher = asyncio.ensure_future(_watch(receive, task, flags)) if delay or gap else None
    try:
        if delay:
            await asyncio.sleep(delay)
        if not stream:
            flags.finished = True
            await _send_json(send, 200, parts[0])
        else:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            last = len(parts) - 1
            for i, part in enumerate(parts):
                if i == drop:
                    raise _Drop("drop-mid-stream")
                if gap and i:
                    await asyncio.sleep(gap)
                flags.finished = i == last
                await send({"type": "http.response.body", "body": part, "more_body": i != last})
        STATS["completed"] += 1
    except asyncio.CancelledError:
        if not flags.disconnected:
            raise
        task.uncancel()
        STATS["cancelled"] += 1
    finally:
        if watcher is not None:
            watcher.cancel()


async def _misbehave(receive: Receive, send: Send, model: str, parts: list[bytes], stream: bool) -> None:
    """A hung upstream. `hang`: takes the request and never answers. `stall-mid-stream`: sends the headers and the
    first two events (or half the JSON body), then nothing more. `trickle-<ms>`: sends the body one byte every <ms>
    milliseconds. Each holds the connection until the client goes away."""
    task = asyncio.current_task()
    assert task is not None
    flags = _Flags()
    watcher = asyncio.ensure_future(_watch(receive, task, flags))
    forever = asyncio.Event()
    try:
        if model == "hang":
            await forever.wait()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS if stream else [_JSON_CT]})
        if model == "stall-mid-stream":
            head = b"".join(parts[:2]) if stream else parts[0][: len(parts[0]) // 2]
            await send({"type": "http.response.body", "body": head, "more_body": True})
            await forever.wait()
        body, gap = b"".join(parts), int(model[8:]) / 1000
        for i in range(len(body)):
            await send({"type": "http.response.body", "body": body[i:i + 1], "more_body": i < len(body) - 1})
            await asyncio.sleep(gap)
        STATS["completed"] += 1
    except asyncio.CancelledError:
        if not flags.disconnected:
            raise
        task.uncancel()
        STATS["cancelled"] += 1
    finally:
        watcher.cancel()


class ChatCompletions:
    """Raw ASGI endpoint for POST /v1/chat/completions (raw to control the stream and disconnects)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            raw += msg.get("body", b"")
            if not msg.get("more_body", False):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _KEEP_HEADERS}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        REQUESTS.append({"headers": headers, "body": body})
        if not isinstance(body, dict):
            await _send_json(send, *_error(400, "invalid_request_error", None, "Request body is not a JSON object."))
            return
        model = str(body.get("model") or "echo")
        if model in _FAILS:
            status, payload = _error(*_FAILS[model])
            await _send_json(send, status, payload, [(b"retry-after", b"1")] if status == 429 else None)
            return
        stream = body.get("stream") is True
        reply = _build_reply(body, model)
        if model in ("hang", "stall-mid-stream") or (model.startswith("trickle-") and model[8:].isdigit()):
            parts = _stream(reply, model, False, None) if stream else [_completion(reply, model)]
            await _misbehave(receive, send, model, parts, stream)
            return
        delay = gap = 0.0
        if model.startswith("slow-") and model[5:].isdigit():
            delay = int(model[5:]) / 1000
            gap = delay / 10
        elif (drip := _drip(model)) is not None:
            gap = drip[1] / 1000
        if not stream:
            await _deliver(receive, send, [_completion(reply, model)], False, delay, 0.0, None)
            return
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        top = body.get("top_logprobs") if body.get("logprobs") else None
        parts = _stream(reply, model, include_usage, top if isinstance(top, int) else None)
        drop = 1 + len(reply.reasoning) + min(3, len(reply.content)) if model == "drop-mid-stream" else None
        await _deliver(receive, send, parts, True, delay, gap, drop)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def _models(request: Request) -> Response:
    data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "switchboard-fake"} for m in MODELS]
    return _json({"object": "list", "data": data})


async def _requests(request: Request) -> Response:
    if request.method == "DELETE":
        REQUESTS.clear()
        return _json({"cleared": True})
    return _json(REQUESTS)


async def _stats(request: Request) -> Response:
    if request.method == "DELETE":
        STATS.update(cancelled=0, completed=0)
    return _json(STATS)


async def _healthz(request: Request) -> Response:
    return _json({"status": "ok"})


def create_app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/chat/completions", ChatCompletions(), methods=["POST"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/_requests", _requests, methods=["GET", "DELETE"]),
        Route("/_stats", _stats, methods=["GET", "DELETE"]),
        Route("/healthz", _healthz, methods=["GET"]),
    ])


def _not_drop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _Drop))


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            sys.stdout.write(f"LISTENING {self.url}\n")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Chat Completions upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    config = uvicorn.Config(create_app(), loop="uvloop", http="httptools", log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    logging.getLogger("uvicorn.error").addFilter(_not_drop)
    _Server(config, f"http://{host}:{port}").run(sockets=[sock])


if __name__ == "__main__":
    main()
