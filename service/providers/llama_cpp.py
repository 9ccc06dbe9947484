"""The embedded local models, each in its own worker process, reached over a Unix socket.

The provider supervises one worker per model (:mod:`switchboard.service.local.supervisor`) and talks to it with the
OpenAI Chat Completions API through the shared HTTP provider code, so a crash in llama.cpp ends only that model's
requests and the worker is restarted. Requests to one model wait in a fair FIFO queue of bounded size; a request
cancelled while it waits leaves the queue, and one cancelled while it generates closes its connection, which stops the
worker's generation between tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from switchboard.responses.v1 import items_pb2
from switchboard.service.local.models import BUILTIN, DEFAULT_CACHE_DIR, GEMMA, builtin_path
from switchboard.service.local.supervisor import State, Supervisor, WorkerSpec
from switchboard.service.providers.base import Delta, Turn
from switchboard.service.providers.http import JSON
from switchboard.service.providers.openai_chat import OpenAIChatProvider
from switchboard.shared.errors import ApiError, UpstreamError, invalid

DEFAULT_QUEUE_SIZE = 16


def default_threads() -> int:
    """Half the CPUs: the gateway's own processes need the rest, and llama.cpp's threads wait for each other at
    every step, so one that loses its core stalls them all (on 2 busy cores, 2 threads ran 17x slower than 1)."""
    return max(1, (os.cpu_count() or 2) // 2)


class _WorkerClient(OpenAIChatProvider):
    """Chat Completions over the worker's Unix socket; the caller's deadline travels as ``timeout`` so the worker
    ends the answer as incomplete instead of being cut off."""

    def __init__(self, name: str, socket: Path) -> None:
        super().__init__(name, base_url="http://worker/v1", max_connections=8)
        self._socket = socket

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.UnixConnector(path=str(self._socket), limit=self._max_connections)

    def body(self, turn: Turn) -> JSON:
        body = super().body(turn)
        if turn.timeout is not None:
            body["timeout"] = turn.timeout
        return body


class FairQueue:
    """One request at a time, the others waiting in arrival order; past ``size`` waiting, a request is refused
    at once (429 with Retry-After) rather than queued without bound."""

    def __init__(self, model_id: str, size: int, retry_after: float) -> None:
        self._model_id = model_id
        self._size = size
        self._retry_after = retry_after
        self._lock = asyncio.Lock()  # FIFO: waiters are woken in the order they came
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._lock.locked() and self.waiting >= self._size:
            raise UpstreamError(
                f"The local model '{self._model_id}' is busy: {self.waiting} requests are already waiting.",
                code="local_model_busy", status=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=self._retry_after)
        self.waiting += 1
        try:
            await self._lock.acquire()  # a cancelled waiter leaves the queue here
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


@dataclasses.dataclass(slots=True)
class _Model:
    supervisor: Supervisor
    client: _WorkerClient
    queue: FairQueue
    restarts: int = 0  # the supervisor's count when the client's connections were opened


class LlamaCppProvider:
    """Provider for the embedded models: ``local/<model id>``."""

    def __init__(
        self,
        name: str,
        *,
        models: dict[str, Any] | None = None,
        model_path: str | None = None,
        n_threads: int | None = None,
        n_ctx: int = 2048,
        cache_dir: str | None = None,
        socket_dir: str | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        busy_retry_after: float = 5.0,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 30.0,
        start_timeout: float = 120.0,
    ) -> None:
        """``models`` maps model ids to GGUF files (a path, or ``{path, n_threads, n_ctx}``; no path for a packaged
        model); by default the packaged ones. ``model_path`` is the file of ``gemma-3-270m``."""
        if queue_size < 0 or restart_backoff <= 0 or restart_backoff_max < restart_backoff:
            raise TypeError("llama-cpp: queue_size must be >= 0 and 0 < restart_backoff <= restart_backoff_max")
        self.name = name
        self._queue = (queue_size, busy_retry_after)
        self._restart = (restart_backoff, restart_backoff_max, start_timeout)
        self._socket_dir = Path(socket_dir) if socket_dir else None
        self._own_dir = False
        cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        wanted: dict[str, Any] = dict(models) if models is not None else dict.fromkeys(BUILTIN)
        if model_path:
            wanted[GEMMA] = model_path
        # model id -> (how to find its file, threads, context): workers start on warm-up or first use.
        self._specs: dict[str, tuple[Callable[[], Path], int, int]] = {}
        for model_id, raw in wanted.items():
            entry = raw if isinstance(raw, dict) else {"path": raw}
            unknown = set(entry) - {"path", "n_threads", "n_ctx"}
            if unknown or "/" in model_id:
                raise TypeError(f"llama-cpp models.{model_id}: a model id without '/' mapping to a path or "
                                f"{{path, n_threads, n_ctx}}")
            path = entry.get("path")
            if path is None and model_id not in BUILTIN:
                raise TypeError(f"llama-cpp models.{model_id}: a path is required (packaged: {', '.join(BUILTIN)})")
            resolve = partial(builtin_path, model_id, cache) if path is None else partial(Path, str(path))
            self._specs[model_id] = (resolve, int(entry.get("n_threads") or n_threads or default_threads()),
                                     int(entry.get("n_ctx") or n_ctx))
        self._models: dict[str, _Model] = {}

    @property
    def model_ids(self) -> list[str]:
        """The models this provider serves (``<provider>/<model id>`` to clients)."""
        return list(self._specs)

    def _start(self) -> None:
        if self._models or not self._specs:
            return
        if self._socket_dir is None:
            self._socket_dir, self._own_dir = Path(tempfile.mkdtemp(prefix="switchboard-models-")), True
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        backoff, backoff_max, start_timeout = self._restart
        for model_id, (resolve, n_threads, n_ctx) in self._specs.items():
            socket = self._socket_dir / f"{model_id}.sock"
            spec = WorkerSpec(model_id=model_id, resolve=resolve, socket=socket, n_threads=n_threads, n_ctx=n_ctx)
            supervisor = Supervisor(spec, restart_backoff=backoff, restart_backoff_max=backoff_max,
                                    start_timeout=start_timeout)
            supervisor.start()
            self._models[model_id] = _Model(supervisor, _WorkerClient(self.name, socket),
                                            FairQueue(model_id, *self._queue))

    async def warm_up(self) -> None:
        """Starts every worker and waits until each serves or has failed (a failed one does not stop the others)."""
        self._start()
        # Bounded: a worker that keeps failing to load goes on trying in the background, serving 503s meanwhile.
        settled = [asyncio.ensure_future(m.supervisor.wait_settled()) for m in self._models.values()]
        if settled:
            _, pending = await asyncio.wait(settled, timeout=self._restart[2])
            for task in pending:
                task.cancel()
        for model_id, model in self._models.items():
            state = model.supervisor.state
            print(f"switchboard: local model {self.name}/{model_id}: {state.value}"
                  + (f" (worker pid {model.supervisor.pid})" if state is State.READY else ""),
                  file=sys.stderr, flush=True)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.client.aclose()
        await asyncio.gather(*(m.supervisor.stop() for m in self._models.values()))
        if self._own_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def stream(self, turn: Turn) -> AsyncGenerator[Delta, None]:
        _require_text_only(turn.items)
        if turn.model not in self._specs:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "model_not_found",
                           f"The provider '{self.name}' has no model '{turn.model}'; it serves "
                           + ", ".join(f"{self.name}/{m}" for m in self._specs) + ".", param="model")
        self._start()
        model = self._models[turn.model]
        deadline = None if turn.timeout is None else time.monotonic() + turn.timeout
        async with model.queue.slot():
            model.supervisor.check()
            if model.restarts != model.supervisor.restarts:
                # Pooled connections went to the worker that died; start afresh with the new one.
                model.restarts = model.supervisor.restarts
                await model.client.aclose()
            if deadline is not None:
                # Time spent waiting in the queue counts against the caller's deadline.
                turn = dataclasses.replace(turn, timeout=max(deadline - time.monotonic(), 0.001))
            try:
                async for delta in model.client.stream(turn):
                    yield delta
            except UpstreamError as err:
                if err.code not in ("upstream_unavailable", "upstream_stream_interrupted"):
                    raise
                # The worker went away: say so in the model's own words once its exit is seen.
                supervisor = model.supervisor
                await supervisor.wait_exit(1.0)
                if supervisor.state is State.READY:
                    raise
                if err.code == "upstream_unavailable" and isinstance(err.__cause__, aiohttp.ClientConnectorError):
                    supervisor.check()  # it was gone before the request: restarting, or failed
                # It died with this request in it. Not retried: the request may be what crashed it.
                raise UpstreamError(f"The local model '{turn.model}' stopped during this request: "
                                    f"{supervisor.last_exit}.", code="local_model_crashed",
                                    retryable=False) from err


_MEDIA = {"input_image": "image", "input_file": "file", "input_audio": "audio", "input_video": "video"}


def _require_text_only(items: Sequence[items_pb2.Item]) -> None:
    """The embedded model reads text only: media input is a clear 400, never silently dropped."""
    for item in items:
        kind = item.WhichOneof("item")
        if kind == "message" and item.message.content.WhichOneof("value") == "parts":
            parts = item.message.content.parts.parts
        elif kind == "function_call_output" and item.function_call_output.output.WhichOneof("value") == "parts":
            parts = item.function_call_output.output.parts.parts
        else:
            continue
        for part in parts:
            media = _MEDIA.get(part.WhichOneof("part") or "")
            if media is not None:
                raise invalid(f"The embedded model accepts text only; this request has {media} input.", "input",
                              code="unsupported_input")
