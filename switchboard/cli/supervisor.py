"""`switchboard serve`: a supervisor whose children are the gRPC service (serving the HTTP edge in process, by default),
the HTTP edge when it runs separately (`server.edge: separate`) and (when configured) Envoy.

Each child runs under :mod:`switchboard.cli.lifeline`, so it is SIGKILLed by the kernel if serve dies, even by SIGKILL,
and lives in a process group of its own, which serve stops as a whole (whatever the child started goes with it). The
children start in order (service, edge, Envoy), each only once the previous one is ready. A child that dies is restarted
after an exponential backoff; more than ``server.restart_limit`` restarts of one child within ``server.restart_window``
seconds stop everything, and serve exits 1 naming the child and how it ended. SIGTERM or SIGINT stops Envoy (after
draining it), then the edge and the service together, all within ``server.grace``.

serve itself holds no gRPC channel, model or store: it only spawns, watches and probes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from switchboard.cli.envoy import EnvoyAddresses, EnvoyProcess, otlp_grpc_address, render_config
from switchboard.cli.summary import startup_summary
from switchboard.shared.config.settings import WORKER_ENV, Config, parse_address
from switchboard.shared.process import EDGE_READY

log = logging.getLogger("switchboard.supervisor")

# What an edge process prints once it listens (edge/server.py).
_BACKOFF_FIRST = 0.25
_BACKOFF_MAX = 8.0
_KILL_WAIT = 5.0


def say(message: str, *, error: bool = False) -> None:
    print(f"switchboard: {message}", file=sys.stderr if error else sys.stdout, flush=True)


def describe_exit(code: int) -> str:
    """`exited with code 1`, `was killed by signal 9 (SIGKILL)`."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


class StartError(RuntimeError):
    pass


def _launcher() -> list[str]:
    return [sys.executable, "-m", "switchboard.cli.lifeline", str(os.getpid()), "--"]


def _loopback(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)


def _numbered(name: str, index: int, count: int) -> str:
    return name if count == 1 else f"{name} {index + 1}"


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the child's process group; to the child alone while it has not made its group yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Child(ABC):
    """One supervised process."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @abstractmethod
    async def start(self) -> None:
        """Starts the process and returns once it is ready; raises StartError (the process is gone) otherwise."""

    @abstractmethod
    async def wait(self) -> int:
        """The exit status of the running process, once it exits."""

    @abstractmethod
    async def stop(self, timeout: float) -> None:
        """Stops the process (and its group) gracefully, killing it after ``timeout`` seconds; idempotent."""


class PythonChild(Child):
    """A `switchboard service` or `switchboard edge` process. It says when it is ready on stdout, which serve
    reads and forwards (a probe of a port that several processes share could reach another one)."""

    def __init__(self, name: str, argv: list[str], *, ready_line: str, timeout: float,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(name)
        self.argv = argv
        self.env = {**os.environ, **env} if env else None
        self.ready_line = ready_line
        self.timeout = timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        ready = asyncio.Event()
        # close_fds=False keeps Python's spawn a posix_spawn(); serve's own descriptors are non-inheritable.
        self._proc = proc = await asyncio.create_subprocess_exec(
            *_launcher(), *self.argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, close_fds=False, env=self.env)
        self._pump = asyncio.create_task(self._forward(proc, ready))
        exited = asyncio.ensure_future(proc.wait())
        waiter = asyncio.ensure_future(ready.wait())
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.wait({exited, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            await self.stop(0)
            raise StartError(f"the {self.name} was not ready within {self.timeout:g} s") from None
        finally:
            exited.cancel()
            waiter.cancel()
        if not ready.is_set():
            await self.stop(0)
            raise StartError(f"the {self.name} {describe_exit(proc.returncode or 0)} while starting")

    async def _forward(self, proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            with contextlib.suppress(OSError):  # serve's own stdout gone: keep draining the child's
                sys.stdout.write(line)
                sys.stdout.flush()
            if self.ready_line in line:
                ready.set()

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), timeout=max(timeout, 0.0))
                except TimeoutError:
                    pass
            # Whatever is left in the group (the child, or something it started) goes now.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=_KILL_WAIT)
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, timeout=1.0)
            self._pump = None


class EnvoyChild(Child):
    """Envoy, started from the rendered template; ready when its admin /ready answers; drained before it stops."""

    def __init__(self, config_text: str) -> None:
        super().__init__("Envoy")
        self._envoy = EnvoyProcess(config_text, launcher=_launcher())

    @property
    def pid(self) -> int | None:
        return self._envoy.pid

    async def start(self) -> None:
        try:
            await self._envoy.start()
        except RuntimeError as exc:
            raise StartError(str(exc)) from None

    async def wait(self) -> int:
        if self._envoy.pid is None:  # a failed start already stopped it
            return 1
        return await self._envoy.wait()

    async def stop(self, timeout: float) -> None:
        pid = self._envoy.pid
        # The drain gets ``timeout``; Envoy gets 2 s more to exit after it.
        await self._envoy.stop(drain=timeout > 0, timeout=timeout + 2.0)
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)


def envoy_config(config: Config) -> str:
    """deploy/envoy/envoy.yaml rendered for this configuration's addresses."""
    server = config.server
    assert server.envoy is not None
    # Envoy traces when Switchboard does (an OTLP endpoint is configured): to `server.envoy_otlp` when set, else
    # to the same OTLP/gRPC collector as the service and the edge.
    collector: tuple[str, int] | None = None
    if config.otel_enabled:
        if server.envoy_otlp:
            collector = parse_address(server.envoy_otlp, "server.envoy_otlp")
        else:
            endpoint = config.otlp_endpoint or ""
            collector = otlp_grpc_address(endpoint)
            if collector is None and endpoint:
                log.warning("Envoy does not trace: it cannot export to %s (plaintext OTLP/gRPC only); "
                            "set server.envoy_otlp", endpoint)
    addresses = EnvoyAddresses(
        public=parse_address(server.envoy, "server.envoy"),
        edge=_loopback(parse_address(server.http, "server.http")),
        service=_loopback(parse_address(server.grpc, "server.grpc")),
        admin=parse_address(server.envoy_admin, "server.envoy_admin"),
        grpc_internal=parse_address(server.envoy_grpc, "server.envoy_grpc") if server.envoy_grpc else None,
        otel_collector=collector,
    )
    return render_config(server.envoy_config.read_text(), addresses)


class Supervisor:
    def __init__(self, config: Config, config_path: Path) -> None:
        self.config = config
        server = config.server
        command = [sys.executable, "-m", "switchboard.cli.main"]
        http_host, http_port = _loopback(parse_address(server.http, "server.http"))
        self.http_url = f"http://{http_host}:{http_port}"
        self.public_url = self.http_url
        # server.workers service and edge processes share their ports (SO_REUSEPORT).
        # Service and edge N pair up on their own Unix socket when there is one (config.grpc_unix_path).
        count = server.workers
        # The service and edge processes allocate with malloc rather than pymalloc: after a burst of streams,
        # pymalloc's arenas stay pinned by a few survivors (+70-100 MB for good), while malloc's free pages go back
        # to the system (switchboard.shared.memory trims them): 2,000 streams leave +15 MB instead of +95 MB,
        # for no measurable CPU cost. A PYTHONMALLOC of the caller's own wins.
        allocator = {"PYTHONMALLOC": os.environ.get("PYTHONMALLOC", "malloc")}
        numbers = [{**allocator, **({WORKER_ENV: str(i)} if count > 1 else {})} for i in range(count)]
        # With the edge in process (the default), each service process serves HTTP too and is ready once it does.
        in_process = server.edge == "in-process"
        services: list[Child] = [
            PythonChild(_numbered("service", i, count),
                        [*command, "service", "--config", str(config_path), *(["--edge"] if in_process else [])],
                        ready_line=EDGE_READY if in_process else "gRPC service listening", timeout=300.0,
                        env=numbers[i]) for i in range(count)]
        edges: list[Child] = [] if in_process else [
            PythonChild(_numbered("edge", i, count), [*command, "edge", "--config", str(config_path)],
                        ready_line=EDGE_READY, timeout=60.0, env=numbers[i]) for i in range(count)]
        self.children: list[Child] = [*services, *edges]
        # The last child that serves HTTP: once it is ready, the edge listens.
        self._http_ready = (edges or services)[-1].name
        if server.envoy:
            self.children.append(EnvoyChild(envoy_config(config)))
            env_host, env_port = _loopback(parse_address(server.envoy, "server.envoy"))
            self.public_url = f"http://{env_host}:{env_port}"
        self._stop = asyncio.Event()
        self._failure: str | None = None
        self._restarts: dict[str, collections.deque[float]] = {c.name: collections.deque() for c in self.children}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        watchers: list[asyncio.Task[None]] = []
        try:
            starting = asyncio.create_task(self._start_all())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, StartError):
                    await starting
            else:
                try:
                    starting.result()
                except StartError as exc:
                    self._failure = str(exc)
                else:
                    self._announce()
                    watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
                    await stopping
            stopping.cancel()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._stop_all()
        if self._failure is not None:
            say(self._failure, error=True)
            return 1
        return 0

    async def _start_all(self) -> None:
        for child in self.children:
            await child.start()
            if child.name == self._http_ready:
                say(f"HTTP edge listening on {self.http_url}")
            elif child.name == "Envoy":
                say(f"Envoy listening on {self.public_url}")

    def _announce(self) -> None:
        say(startup_summary(self.config))
        say("ready. Try:\n  curl " + self.public_url + "/v1/responses -H 'content-type: application/json'"
            + (" -H 'authorization: Bearer $KEY'" if self.config.api_keys else "")
            + " -d '{\"input\": \"Say hello\"}'")

    async def _watch(self, child: Child) -> None:
        try:
            await self._restart_forever(child)
        except Exception as exc:  # an unsupervised child is worse than none: stop everything
            log.exception("supervising the %s failed", child.name)
            self._failure = f"supervising the {child.name} failed: {exc!r}"
            self._stop.set()

    async def _restart_forever(self, child: Child) -> None:
        """Restarts ``child`` whenever it dies, until the restart budget is spent."""
        server = self.config.server
        recent = self._restarts[child.name]
        while True:
            pid = child.pid
            code = await child.wait()
            await child.stop(0)  # reap what is left of its group
            now = time.monotonic()
            while recent and now - recent[0] > server.restart_window:
                recent.popleft()
            ended = f"the {child.name} (pid {pid}) {describe_exit(code)}"
            if len(recent) >= server.restart_limit:
                self._failure = (f"{ended}; it was restarted {len(recent)} times within "
                                 f"{server.restart_window:g} s, giving up")
                self._stop.set()
                return
            recent.append(now)
            delay = min(_BACKOFF_FIRST * 2 ** (len(recent) - 1), _BACKOFF_MAX)
            say(f"{ended}; restarting it in {delay:g} s (restart {len(recent)} of {server.restart_limit} "
                f"within {server.restart_window:g} s)", error=True)
            await asyncio.sleep(delay)
            try:
                await child.start()
            except StartError as exc:
                say(str(exc), error=True)
                continue
            say(f"the {child.name} is back (pid {child.pid})")

    async def _stop_all(self) -> None:
        """Envoy first (drained: in-flight requests finish), then the edge and the service together, all within
        `server.grace` (plus a second for the edge and the service to close once Envoy is drained)."""
        deadline = time.monotonic() + self.config.server.grace
        envoy = [c for c in self.children if isinstance(c, EnvoyChild)]
        others = [c for c in self.children if not isinstance(c, EnvoyChild)]
        for child in envoy:
            await child.stop(max(deadline - time.monotonic(), 0.5))
        await asyncio.gather(*(c.stop(max(deadline - time.monotonic(), 1.0)) for c in others))


async def supervise(config: Config, config_path: Path) -> int:
    return await Supervisor(config, config_path).run()
