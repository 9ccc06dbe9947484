"""gRPC server wiring: the Responses servicer, auth, health and reflection."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchboard.responses.v1 import (
    models_service_pb2,
    models_service_pb2_grpc,
    responses_service_pb2,
    responses_service_pb2_grpc,
)
from switchboard.service.api.auth import ApiKeys, AuthInterceptor
from switchboard.service.api.models import Catalog, ModelsServicer
from switchboard.service.api.servicer import ResponsesServicer
from switchboard.service.pipeline.background import BackgroundWorker
from switchboard.service.pipeline.turns import TurnRunner
from switchboard.service.routing.ratelimit import RateLimiter
from switchboard.service.store import Store
from switchboard.shared.config.settings import Config, grpc_unix_path
from switchboard.shared.local_grpc import LocalChannel, serve_locally
from switchboard.shared.process import raise_open_files_limit

SERVICE_NAME = responses_service_pb2.DESCRIPTOR.services_by_name["Responses"].full_name
MODELS_SERVICE_NAME = models_service_pb2.DESCRIPTOR.services_by_name["Models"].full_name
_MAX_MESSAGE = 64 * 1024 * 1024
# Calls that reached the server but wait for the application to take them (grpc.aio takes them one loop turn at a
# time): past the soft limit gRPC refuses a growing share of new calls at random, past the hard limit all, with
# CANCELLED (which the edge answers with 503 and Retry-After). gRPC's defaults (1000 / 3000) refused about 8% of a
# burst of 2,000 streams.
_MAX_PENDING_CALLS = 8192


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    # The same servicers, called in this process without the transport (an in-process edge); None unless asked.
    local: LocalChannel | None


def create_server(config: Config, runner: TurnRunner, *, store: Store | None = None,
                  worker: BackgroundWorker | None = None, limiter: RateLimiter | None = None,
                  address: str | None = None, local: bool = False) -> Served:
    """A server ready to start, bound to ``address`` (port 0 picks a free port); with ``local``, also a channel
    that calls the same servicers in process."""
    raise_open_files_limit()
    keys = ApiKeys(config.api_keys)
    interceptors = [AuthInterceptor(keys)]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            # Several service processes of one `serve` (server.workers) share the port; otherwise a second
            # server on a taken port must fail, not silently split the traffic.
            ("grpc.so_reuseport", 1 if config.server.workers > 1 else 0),
            ("grpc.max_metadata_size", 1024 * 1024),
            ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * _MAX_PENDING_CALLS),
        ],
    )
    responses = ResponsesServicer(runner, keys, store=store, worker=worker, limiter=limiter)
    models = ModelsServicer(Catalog(config))
    health_servicer = health.aio.HealthServicer()

    def register(target: Any) -> None:
        responses_service_pb2_grpc.add_ResponsesServicer_to_server(responses, target)
        models_service_pb2_grpc.add_ModelsServicer_to_server(models, target)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)

    register(server)
    names = (SERVICE_NAME, MODELS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address or config.server.grpc)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address or config.server.grpc}")
    path = grpc_unix_path(config.server)
    if path and address is None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # left by a process that did not stop cleanly
        if server.add_insecure_port(f"unix:{path}") == 0:
            raise OSError(f"cannot bind the gRPC server to the Unix socket {path}")
    return Served(server, port, health_servicer, serve_locally(register, interceptors) if local else None)


async def mark_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
