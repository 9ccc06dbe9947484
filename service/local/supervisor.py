"""Runs one model worker process and keeps it running.

The supervisor resolves the model file (assembling a packaged one first), spawns ``python -m
switchboard.service.local.worker``, waits until its Unix socket answers ``/health``, and restarts it with exponential
backoff when it dies (each exit logged with its status or signal). A worker that cannot load its file (exit status 3
with a ``FATAL`` line) is not restarted: the model stays failed, and :meth:`Supervisor.check` raises that cause on every
request.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from switchboard.service.local.worker import LOAD_FAILED
from switchboard.shared.errors import UpstreamError

log = logging.getLogger("switchboard.local")

# A worker that stayed up this long is healthy again: its next crash restarts it after the shortest delay.
_HEALTHY_SECONDS = 60.0
_STOP_SECONDS = 5.0


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    model_id: str
    resolve: Callable[[], Path]  # the GGUF file; blocking (may assemble it), run in a thread
    socket: Path
    n_threads: int
    n_ctx: int


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """One model's worker process: started by :meth:`start`, stopped (and never restarted) by :meth:`stop`."""

    def __init__(self, spec: WorkerSpec, *, restart_backoff: float = 0.5, restart_backoff_max: float = 30.0,
                 start_timeout: float = 120.0, max_start_failures: int = 5) -> None:
        self.spec = spec
        self.state = State.STARTING
        self.restarts = 0
        self.pid: int | None = None
        self.last_exit = "its worker has not exited"
        self._backoff = restart_backoff
        self._backoff_max = restart_backoff_max
        self._start_timeout = start_timeout
        self._max_start_failures = max_start_failures
        self._cause = ""  # why the model is failed or restarting
        self._retry_at = 0.0
        self._load_seconds = 1.0  # how long the last start took to become ready
        self._fatal = ""
        self._settled = asyncio.Event()  # set once the first start is decided (ready or failed)
        self._exited = asyncio.Event()  # set when the current worker's exit has been seen
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def stopping(self) -> bool:
        return self.state is State.STOPPED

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"local model {self.model_id}")

    async def wait_settled(self) -> None:
        """Until the first start has succeeded or failed."""
        await self._settled.wait()

    async def wait_exit(self, timeout: float) -> None:
        """Until the worker's exit is seen (a refused connection comes a moment before the exit status does)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), timeout)

    def check(self) -> None:
        """Raises the error a request to this model gets when the worker is not serving."""
        if self.state is State.READY:
            return
        if self.state is State.FAILED:
            raise UpstreamError(f"The local model '{self.model_id}' cannot start: {self._cause}",
                                code="local_model_unavailable", http_status=503)
        if self.state is State.STOPPED:
            raise UpstreamError(f"The local model '{self.model_id}' is shutting down.", code="local_model_unavailable",
                                http_status=503)
        # A restart is the rest of the backoff plus a model load; below 3 s a caller would retry into it.
        wait = max(3, math.ceil(self._retry_at - time.monotonic() + self._load_seconds))
        what = "is starting" if self.state is State.STARTING and not self.restarts else \
            f"is restarting ({self._cause})"
        raise UpstreamError(f"The local model '{self.model_id}' {what}; retry in {wait}s.",
                            code="local_model_restarting", http_status=503, retry_after=float(wait),
                            status=grpc.StatusCode.UNAVAILABLE)

    async def stop(self) -> None:
        """Stops the worker (SIGTERM, then SIGKILL after a few seconds) and the supervision."""
        self.state = State.STOPPED
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_SECONDS)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        with suppress(FileNotFoundError):
            self.spec.socket.unlink()

    # ------------------------------------------------------------ supervision

    def _fail(self, cause: str) -> None:
        self.state = State.FAILED
        self._cause = cause
        self._settled.set()
        log.error("local model %s cannot start: %s", self.model_id, cause)

    async def _run(self) -> None:
        try:
            path = await asyncio.to_thread(self.spec.resolve)
        except Exception as exc:  # noqa: BLE001 - a missing package, a failed assembly: all the same to a client
            self._fail(str(exc) or type(exc).__name__)
            return
        if not path.is_file():
            self._fail(f"the model file {path} does not exist")
            return
        failures = 0  # consecutive starts that never became ready
        attempt = 0  # consecutive crashes, for the backoff
        while not self.stopping:
            started = time.monotonic()
            ready, code = await self._spawn_once(path)
            if self.stopping:
                return
            how = describe_exit(code)
            if code == LOAD_FAILED:
                self._fail(self._fatal or f"the worker could not load {path}")
                return
            failures = 0 if ready else failures + 1
            if failures >= self._max_start_failures:
                self._fail(f"the worker died {failures} times while loading {path} (last: {how})"
                           + (f": {self._fatal}" if self._fatal else ""))
                return
            if time.monotonic() - started > _HEALTHY_SECONDS:
                attempt = 0
            delay = min(self._backoff * 2 ** attempt, self._backoff_max)
            attempt += 1
            self.restarts += 1
            self.state = State.RESTARTING
            self._cause = f"its worker exited with {how}"
            self._retry_at = time.monotonic() + delay
            log.warning("local model %s: worker pid %s exited with %s; restart %d in %.1fs", self.model_id,
                        self.pid, how, self.restarts, delay)
            await asyncio.sleep(delay)

    async def _spawn_once(self, path: Path) -> tuple[bool, int]:
        """Runs the worker until it exits: (whether it became ready, its exit code)."""
        spec = self.spec
        with suppress(FileNotFoundError):
            spec.socket.unlink()
        self._fatal = ""
        spawned = time.monotonic()
        # The worker's parent is this process: it dies with us (PR_SET_PDEATHSIG) and checks our pid.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switchboard.service.local.worker", "--model", str(path), "--model-id", spec.model_id,
            "--socket", str(spec.socket), "--parent-pid", str(os.getpid()), "--threads", str(spec.n_threads),
            "--n-ctx", str(spec.n_ctx), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, close_fds=False)  # a posix_spawn, not a fork beside gRPC's threads
        self._proc, self.pid = proc, proc.pid
        self._exited.clear()
        pump = asyncio.create_task(self._pump(proc))
        ready = await self._await_ready(proc)
        if ready and self.state is not State.STOPPED:
            self._load_seconds = time.monotonic() - spawned
            self.state = State.READY
            self._settled.set()
            log.info("local model %s ready (worker pid %d)", self.model_id, proc.pid)
        code = await proc.wait()
        self.last_exit = f"its worker (pid {proc.pid}) exited with {describe_exit(code)}"
        if self.state is State.READY:
            self.state = State.RESTARTING
            self._cause = f"its worker exited with {describe_exit(code)}"
        self._exited.set()
        await pump
        return ready, code

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """The worker's output goes to ours, line by line; its FATAL line is the cause of a failed start."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line.startswith("FATAL "):
                self._fatal = line.removeprefix("FATAL ")
            print(line, file=sys.stderr, flush=True)

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self._start_timeout
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.spec.socket))) as session:
            while proc.returncode is None and time.monotonic() < deadline and self.state is not State.STOPPED:
                if self.spec.socket.exists():
                    try:
                        async with session.get("http://worker/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                return True
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        pass
                await asyncio.sleep(0.05)
        if proc.returncode is None and self.state is not State.STOPPED:
            log.error("local model %s: worker pid %d not ready after %.0fs; killing it", self.model_id, proc.pid,
                      self._start_timeout)
            with suppress(ProcessLookupError):
                proc.kill()
        return False
