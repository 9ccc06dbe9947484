"""The edge's routes and the app that serves them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from switchboard.edge.app import Edge, error_response
from switchboard.edge.errors import HttpError
from switchboard.edge.models import model_routes
from switchboard.edge.playground import playground_routes
from switchboard.edge.resources import resource_routes
from switchboard.edge.websocket import websocket_endpoint

log = logging.getLogger(__name__)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(HttpError(404, "not_found_error", f"No route for {request.method} {request.url.path}.",
                                    code="not_found"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(HttpError(405, "invalid_request_error",
                                    f"Method {request.method} is not allowed on {request.url.path}.",
                                    code="method_not_allowed"))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("edge request failed", exc_info=exc)
    return error_response(HttpError(500, "server_error", "internal server error", code="internal_error"))


def create_app(edge: Edge, *, playground: bool = False) -> Starlette:
    """The public routes: create (JSON or SSE), the stored-response resources, WebSocket mode and health."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await edge.open()
        try:
            yield
        finally:
            await edge.close()

    app = Starlette(
        routes=[
            Route("/v1/responses", edge.create_response, methods=["POST"]),
            *resource_routes(edge),
            *model_routes(edge),
            *(playground_routes() if playground else ()),
            WebSocketRoute("/v1/responses", websocket_endpoint(edge)),
            Route("/healthz", edge.healthz, methods=["GET"]),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed, 500: _server_error},
        lifespan=lifespan,
    )
    # Every path answers for itself: `/v1/responses/` is an unknown route (JSON 404), not a redirect.
    app.router.redirect_slashes = False
    return app
