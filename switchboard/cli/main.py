"""The `switchboard` command: serve (a supervisor of the service, the edge and optional Envoy; see
:mod:`switchboard.cli.supervisor`), service, edge."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import uvloop

from switchboard.service.api.server import create_server, mark_serving
from switchboard.service.pipeline.background import BackgroundWorker
from switchboard.service.pipeline.turns import TurnRunner
from switchboard.service.providers.registry import build_all
from switchboard.service.routing.ratelimit import create_rate_limiter
from switchboard.service.store import open_store
from switchboard.service.store.retention import run_retention
from switchboard.shared import metrics, telemetry
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import Config, load, parse_address
from switchboard.shared.memory import settle_after_startup, trim_periodically

log = logging.getLogger("switchboard")


def _say(message: str) -> None:
    print(f"switchboard: {message}", flush=True)


async def _stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_service(config: Config, *, edge: bool = False) -> None:
    """The gRPC service; with ``edge``, the HTTP edge too, in this process and event loop, calling the servicers
    through an in-process channel (no gRPC hop; docs/decisions/0015-in-process-edge.md)."""
    telemetry.setup("switchboard-service", enabled=config.otel_enabled, grpc_server=True, http_client=True)
    meters = metrics.setup("switchboard-service", otlp=config.otel_enabled,
                           prometheus=parse_address(config.server.metrics, "server.metrics")
                           if config.server.metrics else None)
    providers = build_all(config)
    store = open_store(config.store, commit_window=config.store_commit_window)
    await store.migrate()
    runner = TurnRunner(config, providers, meters, store)
    jobs = config.background
    worker = BackgroundWorker(runner, store, lease_seconds=jobs.lease_seconds, poll_seconds=jobs.poll_seconds,
                              max_attempts=jobs.max_attempts, concurrency=jobs.concurrency)
    limiter = create_rate_limiter(config.rate_limits)
    served = create_server(config, runner, store=store, worker=worker, limiter=limiter, local=edge)
    server, port, health = served.server, served.port, served.health
    await server.start()
    tasks = [asyncio.create_task(worker.run_forever()), asyncio.create_task(trim_periodically())]
    if config.retention_seconds:
        tasks.append(asyncio.create_task(run_retention(store, config.retention_seconds, interval=60.0)))
    for provider in providers.values():
        warm_up = getattr(provider, "warm_up", None)
        if warm_up is not None:
            await warm_up()
    if not edge:
        settle_after_startup()  # an edge in this process does it once it listens (edge/server.py)
    await mark_serving(health, True)
    host, _ = parse_address(config.server.grpc, "server.grpc")
    _say(f"gRPC service listening on {host}:{port}")
    stopping = asyncio.create_task(_stop_signal())
    http = None
    if served.local is not None:
        from switchboard.edge.server import edge_server

        http, sockets = edge_server(config, served.local)
        http_task = asyncio.create_task(http.serve(sockets=sockets or None))
    try:
        await asyncio.wait({stopping} if http is None else {stopping, http_task},
                           return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            raise RuntimeError("the HTTP edge stopped on its own; stopping the service")
    finally:
        stopping.cancel()
        await mark_serving(health, False)
        if http is None:
            await server.stop(config.server.grace)
        else:
            http.stop()  # drains its in-flight requests while the gRPC server drains its calls
            await asyncio.gather(server.stop(config.server.grace), http_task, return_exceptions=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard", description="A Responses API gateway.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the service, the edge and (when server.envoy is set) Envoy"),
                       ("service", "run only the gRPC service"), ("edge", "run only the HTTP edge")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", required=True, type=Path, help="YAML configuration file")
        if name == "service":
            command.add_argument("--edge", action="store_true",
                                 help="serve the HTTP edge too, in this process (no gRPC hop between them)")
    from switchboard.cli import chat, config_schema, doctor

    doctor.register(commands)
    chat.register(commands)
    config_schema.register(commands)
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
            from switchboard.edge.server import run

            run(config)
        elif args.command == "service":
            uvloop.run(run_service(config, edge=args.edge))
        else:
            from switchboard.cli.supervisor import supervise

            # A plain asyncio loop: serve only spawns and watches processes.
            return asyncio.run(supervise(config, args.config))
    except KeyboardInterrupt:
        pass
    except (ConfigError, OSError, RuntimeError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
