"""The `switchboard` command: serve (service + edge + optional Envoy), service, edge."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import uvloop

from service import metrics, telemetry
from service.background import BackgroundWorker
from service.config import Config, ConfigError, load, parse_address
from service.envoy import EnvoyAddresses, EnvoyProcess, render_config
from service.providers.registry import build_all
from service.ratelimit import create_rate_limiter
from service.server import create_server, mark_serving
from service.store import open_store
from service.store.retention import run_retention
from service.summary import startup_summary
from service.turns import TurnRunner

log = logging.getLogger("switchboard")


def _say(message: str) -> None:
    print(f"switchboard: {message}", flush=True)


async def _stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_service(config: Config, until: asyncio.Future[None] | None = None,
                      ready: asyncio.Event | None = None) -> None:
    telemetry.setup("switchboard-service", enabled=config.otel_enabled, grpc_server=True, http_client=True)
    meters = metrics.setup("switchboard-service", otlp=config.otel_enabled,
                           prometheus=parse_address(config.server.metrics, "server.metrics")
                           if config.server.metrics else None)
    providers = build_all(config)
    store = open_store(config.store)
    await store.migrate()
    runner = TurnRunner(config, providers, meters, store)
    jobs = config.background
    worker = BackgroundWorker(runner, store, lease_seconds=jobs.lease_seconds, poll_seconds=jobs.poll_seconds,
                              max_attempts=jobs.max_attempts, concurrency=jobs.concurrency)
    limiter = create_rate_limiter(config.rate_limits)
    server, port, health = create_server(config, runner, store=store, worker=worker, limiter=limiter)
    await server.start()
    tasks = [asyncio.create_task(worker.run_forever())]
    if config.retention_seconds:
        tasks.append(asyncio.create_task(run_retention(store, config.retention_seconds, interval=60.0)))
    for provider in providers.values():
        warm_up = getattr(provider, "warm_up", None)
        if warm_up is not None:
            await warm_up()
    await mark_serving(health, True)
    host, _ = parse_address(config.server.grpc, "server.grpc")
    _say(f"gRPC service listening on {host}:{port}")
    if ready is not None:
        ready.set()
    try:
        await (until if until is not None else _stop_signal())
    finally:
        await mark_serving(health, False)
        await server.stop(config.server.grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await worker.stop()
        if limiter is not None:
            await limiter.aclose()
        await store.close()
        for provider in providers.values():
            await provider.aclose()
        telemetry.shutdown()
        metrics.shutdown()


async def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the edge exited with code {process.returncode}")
            try:
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s")


async def serve_all(config: Config, config_path: Path) -> None:
    """The service in this process, the edge in a child process, and Envoy in front when configured."""
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready = asyncio.Event()
    service_task = asyncio.create_task(run_service(config, until=stop, ready=ready))
    edge = None
    envoy = None
    try:
        # The embedded model's loader swaps the process's stdout while it runs: start children after it.
        await _first(ready.wait(), service_task)
        # close_fds=False lets Python posix_spawn() instead of fork() next to gRPC's threads (our descriptors
        # are non-inheritable anyway, PEP 446).
        edge = subprocess.Popen([sys.executable, "-m", "service.cli", "edge", "--config", str(config_path)],
                                close_fds=False)
        http_host, http_port = parse_address(config.server.http, "server.http")
        http_host = "127.0.0.1" if http_host in ("0.0.0.0", "::") else http_host
        await _wait_http(f"http://{http_host}:{http_port}/healthz", edge)
        _say(f"HTTP edge listening on http://{http_host}:{http_port}")
        public = f"http://{http_host}:{http_port}"
        if config.server.envoy:
            envoy = await _start_envoy(config)
            env_host, env_port = parse_address(config.server.envoy, "server.envoy")
            public = f"http://{'127.0.0.1' if env_host in ('0.0.0.0', '::') else env_host}:{env_port}"
            _say(f"Envoy listening on {public}")
        _say(startup_summary(config))
        _say("ready. Try:\n  curl " + public + "/v1/responses -H 'content-type: application/json'"
             + (" -H 'authorization: Bearer $KEY'" if config.api_keys else "")
             + " -d '{\"input\": \"Say hello\"}'")
        await _stop_signal()
    finally:
        if envoy is not None:
            await envoy.stop()
        if edge is not None and edge.poll() is None:
            edge.send_signal(signal.SIGTERM)
            await asyncio.to_thread(edge.wait, config.server.grace + 5)
        if not stop.done():
            stop.set_result(None)
        await service_task


async def _start_envoy(config: Config) -> EnvoyProcess:
    from service.envoy import otlp_grpc_address

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
    envoy = EnvoyProcess(render_config(server.envoy_config.read_text(), addresses))
    await envoy.start()
    return envoy


async def _first(wait: Coroutine[Any, Any, Any], task: asyncio.Task[None]) -> None:
    """Waits for ``wait``, or re-raises the error of ``task`` if it ends first."""
    waiter = asyncio.ensure_future(wait)
    done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
        raise RuntimeError("the service stopped during start-up")


def _loopback(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard", description="A Responses API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the service, the edge and (when server.envoy is set) Envoy"),
                       ("service", "run only the gRPC service"), ("edge", "run only the HTTP edge")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", required=True, type=Path, help="YAML configuration file")
    from service import chat, doctor

    doctor.register(commands)
    chat.register(commands)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is not None:
        return int(args.run(args))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"switchboard: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "edge":
            from edge.server import run

            run(config)
        elif args.command == "service":
            uvloop.run(run_service(config))
        else:
            uvloop.run(serve_all(config, args.config))
    except KeyboardInterrupt:
        pass
    except (ConfigError, OSError, RuntimeError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
