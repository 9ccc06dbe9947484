"""Routes for the model catalog: GET /v1/models and GET /v1/models/{model} (model ids may contain '/')."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from switchboard.edge.app import Edge
from switchboard.responses.v1 import models_service_pb2 as pb
from switchboard.responses.v1 import models_service_pb2_grpc


def model_routes(edge: Edge) -> list[BaseRoute]:
    def stub() -> Any:
        # The generated stubs type calls as synchronous; on the edge's aio channel they return aio calls.
        return models_service_pb2_grpc.ModelsStub(edge.channel)

    async def list_models(request: Request) -> Response:
        return await edge.unary(stub().ListModels(pb.ListModelsRequest(), metadata=edge.metadata(request),
                                                  timeout=30))

    async def get_model(request: Request) -> Response:
        message = pb.GetModelRequest(model=request.path_params["model"])
        return await edge.unary(stub().GetModel(message, metadata=edge.metadata(request), timeout=30))

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]
