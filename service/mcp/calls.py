"""Running one MCP call for the turn pipeline: within the call timeout and what is left of the response's time
budget, in its own span (tool and server label only: never arguments, headers or output)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from switchboard.responses.v1 import items_pb2
from switchboard.service.mcp.client import McpServer, Timeouts, call_tool
from switchboard.service.mcp.tools import call_output, parse_arguments
from switchboard.shared.config.settings import McpConfig

tracer = trace.get_tracer("switchboard.service")
BUDGET_MESSAGE = "The response's time budget for MCP tools ran out."


@dataclass(frozen=True)
class Outcome:
    output: str | None = None
    error: items_pb2.McpCallError | None = None
    # The response's time budget ran out: the response ends incomplete.
    out_of_time: bool = False

    def text(self) -> str:
        """What the upstream reads as the call's result."""
        call = items_pb2.McpCall()
        if self.error is not None:
            call.error.CopyFrom(self.error)
        else:
            call.output = self.output or ""
        return call_output(call)


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def http_error(code: int, message: str) -> items_pb2.McpCallError:
    return items_pb2.McpCallError(http=items_pb2.McpHttpError(code=code, message=message))


async def execute(server: McpServer, name: str, arguments: str, config: McpConfig, deadline: float) -> Outcome:
    """Calls ``name`` on ``server``; ``deadline`` (monotonic) ends the response's MCP time budget."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return Outcome(error=http_error(0, BUDGET_MESSAGE), out_of_time=True)
    parsed = parse_arguments(arguments)
    if parsed is None:
        return Outcome(error=items_pb2.McpCallError(protocol=items_pb2.McpProtocolError(
            code=-32602, message="The arguments are not a JSON object.")))
    timeouts = Timeouts(connect=min(config.connect_timeout, remaining), operation=min(config.call_timeout, remaining))
    attributes = {"mcp.server.label": server.label, "gen_ai.tool.name": name, "gen_ai.operation.name": "execute_tool"}
    with tracer.start_as_current_span(f"mcp.call {name}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            async with asyncio.timeout(remaining):
                result = await call_tool(server, name, parsed, timeouts)
        except TimeoutError:
            span.set_status(Status(StatusCode.ERROR, "time_budget"))
            return Outcome(error=http_error(0, BUDGET_MESSAGE), out_of_time=True)
        if result.error is None:
            return Outcome(output=result.output)
        span.set_status(Status(StatusCode.ERROR, result.error.kind))
    failure = result.error
    if failure.kind == "mcp_tool_execution_error":
        content = struct_pb2.Value()
        content.list_value.extend(_struct(block) for block in result.error_content or [])
        return Outcome(error=items_pb2.McpCallError(execution=items_pb2.McpToolExecutionError(content=content)))
    if failure.kind == "mcp_protocol_error":
        return Outcome(error=items_pb2.McpCallError(protocol=items_pb2.McpProtocolError(
            code=failure.code, message=failure.message)))
    return Outcome(error=http_error(failure.code, failure.message), out_of_time=time.monotonic() >= deadline)
