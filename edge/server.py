"""Runs the edge ASGI app with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import grpc
import uvicorn
import uvloop
from starlette.types import ASGIApp

from switchboard.edge.app import Edge
from switchboard.edge.routes import create_app
from switchboard.shared import telemetry
from switchboard.shared.config.settings import Config, grpc_unix_path, parse_address
from switchboard.shared.memory import settle_after_startup, trim_periodically
from switchboard.shared.process import EDGE_READY, raise_open_files_limit


def grpc_target(config: Config) -> str:
    """Where the edge reaches the service: the configured target, the service's Unix socket, or its own listen
    address."""
    if config.server.grpc_target:
        return config.server.grpc_target
    path = grpc_unix_path(config.server)
    if path:
        return f"unix:{path}"
    host, port = parse_address(config.server.grpc, "server.grpc")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def build_app(config: Config, channel: grpc.aio.Channel | None = None) -> ASGIApp:
    """The edge's app, calling the service at its gRPC target, or through ``channel`` (in process)."""
    telemetry.setup("switchboard-edge", enabled=config.otel_enabled, grpc_client=True)
    edge = Edge(grpc_target(config), max_body_bytes=config.server.max_body_bytes,
                request_timeout=config.server.request_timeout, forward_trace_headers=not config.otel_enabled,
                event_names=config.server.event_names, channel=channel)
    app: ASGIApp = create_app(edge, playground=config.server.playground)
    if config.otel_enabled:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        # In the service's process the global provider is the service's: the edge's spans keep the edge's name.
        provider = telemetry.own_provider("switchboard-edge") if channel is not None else None
        app = OpenTelemetryMiddleware(app, tracer_provider=provider)
    return app


class EdgeServer(uvicorn.Server):
    """uvicorn's server that says when it listens; an embedded one (in the service's process) leaves the signals to
    its host, which stops it with :meth:`stop`."""

    def __init__(self, config: uvicorn.Config, *, embedded: bool = False) -> None:
        super().__init__(config)
        self.embedded = embedded

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self.embedded:
            yield
            return
        with super().capture_signals():
            yield

    def stop(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            settle_after_startup()
            # `switchboard serve` waits for this line (a probe of a shared port could reach another edge process).
            print(f"switchboard: {EDGE_READY}", flush=True)


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so several edge processes share one port (the kernel spreads the
    connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def edge_server(config: Config, channel: grpc.aio.Channel | None = None) -> tuple[EdgeServer, list[socket.socket]]:
    """The edge's HTTP server (embedded when ``channel`` is given) and the sockets to serve it on (one shared by
    several processes with server.workers > 1; none = uvicorn binds server.http itself)."""
    raise_open_files_limit()
    host, port = parse_address(config.server.http, "server.http")
    sockets = [shared_socket(host, port)] if config.server.workers > 1 else []
    server = EdgeServer(uvicorn.Config(
        build_app(config, channel), host=host, port=port, loop="none", http="httptools", lifespan="on",
        access_log=False, log_level="warning", timeout_graceful_shutdown=int(config.server.grace),
        ws="websockets-sansio",
    ), embedded=channel is not None)
    return server, sockets


async def serve(config: Config) -> None:
    server, sockets = edge_server(config)
    trimmer = asyncio.create_task(trim_periodically())
    try:
        await server.serve(sockets=sockets or None)
    finally:
        trimmer.cancel()


def run(config: Config) -> None:
    uvloop.run(serve(config))
