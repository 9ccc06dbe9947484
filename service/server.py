"""gRPC server wiring: the Responses servicer, auth, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import ApiKeys, AuthInterceptor
from service.background import BackgroundWorker
from service.config import Config
from service.models import Catalog, ModelsServicer
from service.ratelimit import RateLimiter
from service.servicer import ResponsesServicer
from service.store import Store
from service.turns import TurnRunner
from switchboard.responses.v1 import (
    models_service_pb2,
    models_service_pb2_grpc,
    responses_service_pb2,
    responses_service_pb2_grpc,
)

SERVICE_NAME = responses_service_pb2.DESCRIPTOR.services_by_name["Responses"].full_name
MODELS_SERVICE_NAME = models_service_pb2.DESCRIPTOR.services_by_name["Models"].full_name
_MAX_MESSAGE = 64 * 1024 * 1024


def create_server(config: Config, runner: TurnRunner, *, store: Store | None = None,
                  worker: BackgroundWorker | None = None, limiter: RateLimiter | None = None,
                  address: str | None = None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A server ready to start, bound to ``address`` (port 0 picks a free port)."""
    keys = ApiKeys(config.api_keys)
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(keys)],
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
            ("grpc.max_metadata_size", 1024 * 1024),
        ],
    )
    responses_service_pb2_grpc.add_ResponsesServicer_to_server(
        ResponsesServicer(runner, keys, store=store, worker=worker, limiter=limiter), server)
    models_service_pb2_grpc.add_ModelsServicer_to_server(ModelsServicer(Catalog(config)), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, MODELS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address or config.server.grpc)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address or config.server.grpc}")
    return server, port, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
