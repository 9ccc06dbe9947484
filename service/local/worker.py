"""A model worker process: one GGUF served with the OpenAI Chat Completions API on a Unix domain socket.

    python -m switchboard.service.local.worker --model FILE --model-id ID --socket PATH --parent-pid PID \
        [--threads N] [--n-ctx N]

Routes: ``POST /v1/chat/completions`` (streamed over SSE or unary), ``GET /v1/models``, ``GET /health`` and
``GET /stats`` (generation counters). Generation runs in a thread, one at a time, off the event loop; a client that
disconnects stops its generation between tokens. The body may carry ``timeout`` (seconds): past it the answer ends
with ``finish_reason: "length"``, like one cut by max tokens.

The worker dies with its parent (``PR_SET_PDEATHSIG``). A model that cannot load prints ``FATAL <cause>`` and exits
with status 3, so the supervisor reports the cause instead of restarting it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from switchboard.service.local.generate import DEFAULT_MAX_TOKENS, JSON, Done, Job, Model
from switchboard.shared.process import die_with_parent

LOAD_FAILED = 3
_ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))
_TEXT_PARTS = frozenset(("text", "input_text", "output_text"))

log = logging.getLogger("switchboard.worker")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _error(status: int, message: str, param: str | None = None, code: str = "invalid_request",
           kind: str = "invalid_request_error") -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _number(body: JSON, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{key} must be a number from {low:g} to {high:g}", key)
    return float(value)


def parse_job(body: Any) -> Job:
    """A validated :class:`Job` from a Chat Completions body; media input is a clear ``unsupported_input``."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequest(f"messages[{i}] must be an object with a role of {sorted(_ROLES)}", f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in _TEXT_PARTS:
                    raise BadRequest(f"The local model accepts text only; messages[{i}] has {kind} input.",
                                     f"messages[{i}].content", code="unsupported_input")
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or an array of text parts",
                             f"messages[{i}].content")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise BadRequest("timeout must be a number of seconds", "timeout")
    return Job(
        messages=messages, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0), top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        top_k=int(_number(body, "top_k", 40, 0, 1_000_000)),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        deadline=None if timeout is None else time.monotonic() + max(float(timeout), 0.0),
    )


class Worker:
    """Serves one loaded model. The lock is released by the generation thread's end, not by the request, so a
    cancelled request cannot let the next generation overlap the thread that is still stopping."""

    def __init__(self, model: Model, model_id: str) -> None:
        self.model = model
        self.model_id = model_id
        self._lock = asyncio.Lock()
        self.stats = {"started": 0, "completed": 0, "cancelled": 0, "failed": 0, "active": 0,
                      "output_tokens": 0, "last_output_tokens": 0}

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/health", self.health),
            Route("/stats", self.get_stats),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ])

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok", "model": self.model_id, "pid": os.getpid()})

    async def get_stats(self, request: Request) -> Response:
        return _json({**self.stats, "pid": os.getpid()})

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                                  "owned_by": "local"}]})

    async def chat(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "the body is not valid JSON")
        try:
            job = parse_job(body)
        except BadRequest as err:
            return _error(400, err.message, err.param, err.code)
        queue = await self._start(job)
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._sse(job, queue, usage), media_type="text/event-stream")
        return await self._unary(request, job, queue)

    async def _start(self, job: Job) -> asyncio.Queue[str | Done | BaseException]:
        """Starts the generation thread once the model is free; its messages arrive on the returned queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Done | BaseException] = asyncio.Queue()

        def emit(msg: str | Done | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, msg)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancel.set()

        def finished(work: asyncio.Future[int]) -> None:
            self._lock.release()
            self.stats["active"] -= 1
            tokens = 0 if work.cancelled() or work.exception() else work.result()
            self.stats["output_tokens"] += tokens
            self.stats["last_output_tokens"] = tokens
            if job.cancelled:
                self.stats["cancelled"] += 1
                log.warning("generation cancelled after %d tokens", tokens)

        await self._lock.acquire()
        self.stats["started"] += 1
        self.stats["active"] += 1
        work = loop.run_in_executor(None, self.model.generate, job, emit)
        work.add_done_callback(finished)
        return queue

    def _chunk(self, ident: str, delta: JSON, finish: str | None = None) -> bytes:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model_id,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def _sse(self, job: Job, queue: asyncio.Queue[str | Done | BaseException],
                   usage: bool) -> AsyncIterator[bytes]:
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            yield self._chunk(ident, {"role": "assistant", "content": ""})
            while True:
                msg = await queue.get()
                if isinstance(msg, str):
                    yield self._chunk(ident, {"content": msg})
                elif isinstance(msg, Done):
                    self.stats["completed"] += 1
                    yield self._chunk(ident, {}, msg.reason)
                    if usage:
                        chunk = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                                 "model": self.model_id, "choices": [], "usage": _usage(msg)}
                        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    yield b"data: [DONE]\n\n"
                    return
                else:
                    self.stats["failed"] += 1
                    log.error("generation failed: %r", msg)
                    error = {"message": f"the local model failed: {type(msg).__name__}", "type": "server_error",
                             "code": "local_model_error", "param": None}
                    yield b"event: error\ndata: " + orjson.dumps({"error": error}) + b"\n\n"
                    return
        finally:
            # Reached on the normal end and when the client went away (the response is cancelled) alike.
            job.cancel.set()

    async def _unary(self, request: Request, job: Job, queue: asyncio.Queue[str | Done | BaseException]) -> Response:
        async def collect() -> tuple[str, Done | BaseException]:
            pieces: list[str] = []
            while True:
                msg = await queue.get()
                if isinstance(msg, str):
                    pieces.append(msg)
                else:
                    return "".join(pieces), msg

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        gen, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((gen, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not gen.done():
                job.cancel.set()
                gen.cancel()
        if not gen.done() or gen.cancelled():
            return Response(status_code=499)
        text, end = gen.result()
        job.cancel.set()
        if not isinstance(end, Done):
            self.stats["failed"] += 1
            log.error("generation failed: %r", end)
            return _error(500, f"the local model failed: {type(end).__name__}", code="local_model_error",
                          kind="server_error")
        self.stats["completed"] += 1
        return _json({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                      "model": self.model_id, "usage": _usage(end),
                      "choices": [{"index": 0, "finish_reason": end.reason,
                                   "message": {"role": "assistant", "content": text}}]})


def _usage(done: Done) -> JSON:
    return {"prompt_tokens": done.input_tokens, "completion_tokens": done.output_tokens,
            "total_tokens": done.input_tokens + done.output_tokens}


def _json(data: JSON) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m switchboard.service.local.worker",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--model-id", required=True, help="the model id answered in /v1/models and responses")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, required=True, help="exit when this process is gone")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)  # never outlive the service, even one killed with SIGKILL
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"worker {args.model_id} [%(process)d] %(levelname)s %(message)s")
    started = time.monotonic()
    try:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"no such file: {args.model}")
        model = Model(args.model, n_ctx=args.n_ctx, n_threads=max(1, args.threads))
    except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
        cause = str(exc).strip() or type(exc).__name__
        print(f"FATAL cannot load {args.model}: {cause}", file=sys.stderr, flush=True)
        os._exit(LOAD_FAILED)
    log.info("loaded %s in %.2fs (%s, n_ctx %d, %d threads)", args.model, time.monotonic() - started,
             "chat template" if model.templated else "transcript prompt", args.n_ctx, args.threads)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    config = uvicorn.Config(Worker(model, args.model_id).app(), uds=args.socket, log_level="warning",
                            access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    # uvicorn stops on SIGTERM/SIGINT; a generation thread still running must not hold the exit up.
    uvicorn.Server(config).run()
    os._exit(0)


if __name__ == "__main__":
    main()
