"""Routes for stored responses: retrieve (JSON or a resumed SSE stream), delete, cancel, input items, compact."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from switchboard.edge import codec
from switchboard.edge.app import Edge, error_response
from switchboard.edge.errors import HttpError, invalid_request
from switchboard.responses.v1 import responses_service_pb2 as pb

_ORDERS = {"asc": pb.LIST_ORDER_ASC, "desc": pb.LIST_ORDER_DESC}


def _includes(request: Request) -> list[pb.Include.ValueType] | HttpError:
    values = request.query_params.getlist("include[]") + request.query_params.getlist("include")
    includes: list[pb.Include.ValueType] = []
    for value in values:
        number = codec.enum_from_json(pb.Include.DESCRIPTOR, value)
        if number is None:
            return invalid_request(f"Invalid value for 'include': {value!r}.", "include")
        includes.append(pb.Include.ValueType(number))
    return includes


def _integer(request: Request, name: str) -> int | None | HttpError:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value.lstrip("-").isdigit():
        return invalid_request(f"Invalid value for '{name}': expected an integer, got {value!r}.", name)
    return int(value)


def resource_routes(edge: Edge) -> list[BaseRoute]:
    async def retrieve(request: Request) -> Response:
        includes = _includes(request)
        starting_after = _integer(request, "starting_after")
        for value in (includes, starting_after):
            if isinstance(value, HttpError):
                return error_response(value)
        assert not isinstance(includes, HttpError) and not isinstance(starting_after, HttpError)
        message = pb.GetResponseRequest(response_id=request.path_params["response_id"], include=includes)
        if starting_after is not None:
            message.starting_after = starting_after
        metadata = edge.metadata(request)
        if request.query_params.get("stream", "").lower() == "true":
            names = edge.names(request)
            if isinstance(names, HttpError):
                return error_response(names)
            # Resuming at or past the last event is an empty stream, not an error.
            return await edge.sse(edge.rpc.ResumeResponse(message, metadata=metadata), empty_ok=True, names=names)
        return await edge.unary(edge.rpc.GetResponse(message, metadata=metadata, timeout=30))

    async def delete(request: Request) -> Response:
        message = pb.DeleteResponseRequest(response_id=request.path_params["response_id"])
        return await edge.unary(edge.rpc.DeleteResponse(message, metadata=edge.metadata(request), timeout=30))

    async def cancel(request: Request) -> Response:
        message = pb.CancelResponseRequest(response_id=request.path_params["response_id"])
        return await edge.unary(edge.rpc.CancelResponse(message, metadata=edge.metadata(request), timeout=30))

    async def input_items(request: Request) -> Response:
        includes = _includes(request)
        limit = _integer(request, "limit")
        for value in (includes, limit):
            if isinstance(value, HttpError):
                return error_response(value)
        assert not isinstance(includes, HttpError) and not isinstance(limit, HttpError)
        order = request.query_params.get("order", "desc")
        if order not in _ORDERS:
            return error_response(invalid_request(f"Invalid value for 'order': {order!r} (asc or desc).", "order"))
        message = pb.ListInputItemsRequest(response_id=request.path_params["response_id"], include=includes,
                                           order=_ORDERS[order])
        for name in ("after", "before"):
            if (cursor := request.query_params.get(name)) is not None:
                setattr(message, name, cursor)
        if limit is not None:
            message.limit = limit
        return await edge.unary(edge.rpc.ListInputItems(message, metadata=edge.metadata(request), timeout=30))

    async def compact(request: Request) -> Response:
        parsed = await edge.parse(request, pb.CompactResponseRequest)
        if isinstance(parsed, HttpError):
            return error_response(parsed)
        return await edge.unary(edge.rpc.CompactResponse(parsed, metadata=edge.metadata(request),
                                                          timeout=edge.request_timeout))

    return [
        Route("/v1/responses/compact", compact, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
    ]
