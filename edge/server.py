"""Runs the edge ASGI app with uvicorn."""

from __future__ import annotations

import socket

import uvicorn
import uvloop
from starlette.types import ASGIApp

from edge.app import Edge
from edge.routes import create_app
from service import telemetry
from service.config import Config, parse_address


def grpc_target(config: Config) -> str:
    """Where the edge reaches the service: the configured target, or the service's own listen address."""
    if config.server.grpc_target:
        return config.server.grpc_target
    host, port = parse_address(config.server.grpc, "server.grpc")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


def build_app(config: Config) -> ASGIApp:
    telemetry.setup("switchboard-edge", enabled=config.otel_enabled, grpc_client=True)
    edge = Edge(grpc_target(config), max_body_bytes=config.server.max_body_bytes,
                request_timeout=config.server.request_timeout, forward_trace_headers=not config.otel_enabled)
    app: ASGIApp = create_app(edge, playground=config.server.playground)
    if config.otel_enabled:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app = OpenTelemetryMiddleware(app)
    return app


async def serve(config: Config, sock: socket.socket | None = None) -> None:
    host, port = parse_address(config.server.http, "server.http")
    server = uvicorn.Server(uvicorn.Config(
        build_app(config), host=host, port=port, loop="none", http="httptools", lifespan="on",
        access_log=False, log_level="warning", timeout_graceful_shutdown=int(config.server.grace),
        ws="websockets-sansio",
    ))
    await server.serve(sockets=[sock] if sock is not None else None)


def run(config: Config) -> None:
    uvloop.run(serve(config))
