"""A fake Responses gRPC service that refuses every call with CANCELLED, as gRPC does for calls it will not take
(too many waiting). Prints ``LISTENING HOST:PORT`` once serving."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import grpc

from switchboard.responses.v1 import responses_service_pb2_grpc


class Refusing(responses_service_pb2_grpc.ResponsesServicer):
    async def CreateResponse(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        await context.abort(grpc.StatusCode.CANCELLED, "refused")

    async def StreamResponseBatched(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        await context.abort(grpc.StatusCode.CANCELLED, "refused")
        yield  # a server-streaming handler


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = grpc.aio.server()
    responses_service_pb2_grpc.add_ResponsesServicer_to_server(Refusing(), server)
    port = server.add_insecure_port(f"{args.host}:0")
    await server.start()
    sys.stdout.write(f"LISTENING {args.host}:{port}\n")
    sys.stdout.flush()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
