"""A local MCP server for tests, built with the `mcp` package's server API (`MCPServer`).

Tools: `add` and `echo` (read-only), `double`, `explode` (always fails) and `sleep`. It records the `authorization`
header of every request so tests can check that the gateway forwards request `headers` (``GET /_headers``). Run it
with ``python -m tests.fakes.mcp_server --port N [--transport sse]``; it prints ``LISTENING http://host:port/<path>``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SEEN_AUTHORIZATION: list[str] = []

server = MCPServer("switchboard-test-tools")


@server.tool(description="Adds two integers.", annotations=ToolAnnotations(readOnlyHint=True))
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Returns the text it is given.", annotations=ToolAnnotations(readOnlyHint=True))
def echo(text: str) -> str:
    return f"echo {text}"


@server.tool(description="Doubles an integer.")
def double(x: int) -> str:
    return str(2 * x)


@server.tool(description="Always fails.")
def explode(text: str) -> str:
    raise RuntimeError(f"exploded on {text!r}")


@server.tool(description="Waits, then answers.")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


class _Recorder:
    """Records the authorization header of every request and serves the record at /_headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"] == "/_headers":
                await JSONResponse({"authorization": SEEN_AUTHORIZATION})(scope, receive, send)
                return
            headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
            if b"authorization" in headers:
                SEEN_AUTHORIZATION.append(headers[b"authorization"].decode())
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=("streamable-http", "sse"), default="streamable-http")
    args = parser.parse_args()
    app: Any = server.sse_app() if args.transport == "sse" else server.streamable_http_app()
    path = "/sse" if args.transport == "sse" else "/mcp"
    config = uvicorn.Config(_Recorder(app), host=args.host, port=args.port, log_level="warning")
    uv = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uv.serve())
        while not uv.started:
            await asyncio.sleep(0.02)
        print(f"LISTENING http://{args.host}:{args.port}{path}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()

