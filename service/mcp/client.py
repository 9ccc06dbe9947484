"""Talking to one remote MCP server with the official `mcp` SDK: list its tools, call one.

Each operation opens its own session (streamable HTTP, or the older HTTP+SSE transport when the URL path ends with
`/sse`) and is bounded by the configured timeouts. Failures come back as :class:`McpFailure` or as an error in the
result, never as exceptions of the SDK. Request headers are used here and go nowhere else: not logged, not traced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


@dataclass(frozen=True)
class McpServer:
    label: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class McpToolSpec:
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None

    @property
    def read_only(self) -> bool:
        return bool((self.annotations or {}).get("readOnlyHint"))


@dataclass(frozen=True)
class McpFailure(Exception):
    """A server that could not be reached or answered with an error. ``kind``: http_error | mcp_protocol_error."""

    message: str
    kind: str = "http_error"
    code: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class CallResult:
    """What a call returned: ``output`` text, or ``error`` (the tool's content blocks when it reported one)."""

    output: str | None = None
    error: McpFailure | None = None
    error_content: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Timeouts:
    connect: float
    operation: float


def _describe(error: BaseException) -> McpFailure:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, McpFailure):
        return error
    if isinstance(error, MCPError):
        return McpFailure(f"The MCP server answered with an error: {error}", "mcp_protocol_error",
                          int(getattr(error, "code", 0) or 0))
    if isinstance(error, httpx2.HTTPStatusError):
        return McpFailure(f"The MCP server answered HTTP {error.response.status_code}.", "http_error",
                          error.response.status_code)
    if isinstance(error, httpx2.TimeoutException | TimeoutError):
        return McpFailure("The MCP server did not answer in time.", "http_error", 0)
    if isinstance(error, httpx2.TransportError | OSError):
        return McpFailure(f"The MCP server could not be reached ({type(error).__name__}).", "http_error", 0)
    return McpFailure(f"The MCP server failed: {type(error).__name__}.", "http_error", 0)


@contextlib.asynccontextmanager
async def _session(server: McpServer, timeouts: Timeouts) -> AsyncIterator[ClientSession]:
    timeout = httpx2.Timeout(timeouts.operation, connect=timeouts.connect)
    if urlsplit(server.url).path.rstrip("/").endswith("/sse"):
        transport: Any = sse_client(server.url, headers=server.headers, timeout=timeouts.connect,
                                    sse_read_timeout=timeouts.operation)
        async with transport as streams, ClientSession(*streams) as session:
            await session.initialize()
            yield session
        return
    async with httpx2.AsyncClient(headers=server.headers, timeout=timeout) as http, \
            streamable_http_client(server.url, http_client=http) as streams, ClientSession(*streams) as session:
        await session.initialize()
        yield session


async def list_tools(server: McpServer, timeouts: Timeouts) -> list[McpToolSpec]:
    """All tools of the server (every page). Raises :class:`McpFailure`."""
    try:
        async with asyncio.timeout(timeouts.connect + timeouts.operation):
            async with _session(server, timeouts) as session:
                tools: list[McpToolSpec] = []
                cursor: str | None = None
                while True:
                    page = await (session.list_tools(params={"cursor": cursor})  # type: ignore[arg-type]
                                  if cursor else session.list_tools())
                    for tool in page.tools:
                        annotations = (tool.annotations.model_dump(by_alias=True, exclude_none=True)
                                       if tool.annotations is not None else None)
                        tools.append(McpToolSpec(name=tool.name, input_schema=dict(tool.input_schema),
                                                 description=tool.description, annotations=annotations or None))
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError):
            raise
        raise _describe(error) from None


async def call_tool(server: McpServer, name: str, arguments: dict[str, Any], timeouts: Timeouts) -> CallResult:
    """Calls a tool. A tool that reports an error, or a server that fails, gives a result with ``error``."""
    try:
        async with asyncio.timeout(timeouts.connect + timeouts.operation):
            async with _session(server, timeouts) as session:
                result = await session.call_tool(name, arguments)
    except BaseException as error:
        if isinstance(error, asyncio.CancelledError):
            raise
        return CallResult(error=_describe(error))
    blocks = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
    if result.is_error:
        return CallResult(error=McpFailure("The tool reported an error.", "mcp_tool_execution_error"),
                          error_content=blocks)
    texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    if texts:
        return CallResult(output="\n".join(texts))
    structured = result.structured_content
    return CallResult(output=orjson.dumps(structured if structured is not None else blocks).decode())
