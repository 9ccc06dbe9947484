"""The `mcp` tools of a request: checks (allowed servers), listing (or reuse of an earlier listing in the
conversation), the functions the upstream sees for them, approval rules, and how MCP items read to an upstream."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import orjson
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from switchboard.responses.v1 import content_pb2, items_pb2, responses_service_pb2, tools_pb2
from switchboard.service.mcp.client import McpFailure, McpServer, McpToolSpec, Timeouts, list_tools
from switchboard.shared.config.settings import McpConfig
from switchboard.shared.crypto import Sealer
from switchboard.shared.errors import ApiError, invalid

Request = responses_service_pb2.CreateResponseRequest
tracer = trace.get_tracer("switchboard.service")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# What the upstream reads for a call the client did not approve.
DENIED_OUTPUT = "The user did not approve this tool call."


@dataclass(frozen=True)
class McpRoute:
    """An upstream function that is an MCP tool."""

    server_label: str
    name: str
    approval: bool


@dataclass(frozen=True)
class Listing:
    """The tools of one server (after `allowed_tools`), or why listing failed; ``reused`` when an earlier turn of
    the conversation listed them (no new `mcp_list_tools` item then)."""

    server_label: str
    tools: tuple[McpToolSpec, ...] = ()
    error: str | None = None
    reused: bool = False


def function_name(server_label: str, tool: str) -> str:
    """The upstream function name of an MCP tool; `mcp__` names cannot be declared by clients."""
    return _UNSAFE.sub("_", f"mcp__{server_label}__{tool}")[:64]


def mcp_tools(request: Request) -> list[tuple[int, tools_pb2.McpTool]]:
    return [(i, t.mcp) for i, t in enumerate(request.tools) if t.WhichOneof("tool") == "mcp"]


def check(request: Request, config: McpConfig) -> None:
    """Every `mcp` tool names a server this gateway may reach, under a unique label."""
    labels: set[str] = set()
    for index, tool in mcp_tools(request):
        where = f"tools[{index}]"
        if not tool.server_label or _UNSAFE.search(tool.server_label):
            raise invalid("'server_label' must be letters, digits, '_' or '-'.", f"{where}.server_label")
        if tool.server_label in labels:
            raise invalid(f"The server_label {tool.server_label!r} is used twice.", f"{where}.server_label",
                          code="duplicate_value")
        labels.add(tool.server_label)
        for name in ("connector_id", "tunnel_id"):
            if tool.HasField(name):
                raise invalid(f"'{name}' is not supported by this gateway: give 'server_url'.", f"{where}.{name}",
                              code="unsupported_parameter")
        if not tool.server_url:
            raise invalid("Missing required parameter: 'server_url'.", f"{where}.server_url")
        if not config.allows(tool.server_url):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "mcp_server_not_allowed",
                           f"The MCP server {tool.server_url!r} (server_label {tool.server_label!r}) is not allowed "
                           "by this gateway's configuration (mcp.allowed_servers).", param=f"{where}.server_url")
    for index, declared in enumerate(request.tools):
        if declared.WhichOneof("tool") == "function" and declared.function.name.startswith("mcp__"):
            raise invalid("Function names starting with 'mcp__' are reserved for MCP tools.", f"tools[{index}].name")


def server(tool: tools_pb2.McpTool) -> McpServer:
    headers = dict(tool.headers)
    if tool.HasField("authorization"):
        headers["Authorization"] = f"Bearer {tool.authorization}"
    return McpServer(label=tool.server_label, url=tool.server_url, headers=headers)


def _filter_matches(rule: tools_pb2.McpToolFilter, spec: McpToolSpec) -> bool:
    if rule.tool_names and spec.name not in rule.tool_names:
        return False
    if rule.HasField("read_only") and rule.read_only != spec.read_only:
        return False
    return bool(rule.tool_names) or rule.HasField("read_only")


def allowed(tool: tools_pb2.McpTool, spec: McpToolSpec) -> bool:
    if not tool.HasField("allowed_tools"):
        return True
    rule = tool.allowed_tools
    if rule.WhichOneof("value") == "tool_names":
        return spec.name in rule.tool_names.names
    return _filter_matches(rule.filter, spec) or not (rule.filter.tool_names or rule.filter.HasField("read_only"))


def needs_approval(tool: tools_pb2.McpTool, spec: McpToolSpec) -> bool:
    """`always` unless the request says `never`, or a `never` filter matches and no `always` filter does."""
    if not tool.HasField("require_approval"):
        return True
    rule = tool.require_approval
    if rule.WhichOneof("value") == "mode":
        return rule.mode != tools_pb2.MCP_APPROVAL_MODE_NEVER
    if rule.filter.HasField("always") and _filter_matches(rule.filter.always, spec):
        return True
    return not (rule.filter.HasField("never") and _filter_matches(rule.filter.never, spec))


def _earlier(history: list[items_pb2.Item], label: str) -> items_pb2.McpListTools | None:
    found = None
    for item in history:
        if item.WhichOneof("item") == "mcp_list_tools" and item.mcp_list_tools.server_label == label \
                and not item.mcp_list_tools.HasField("error"):
            found = item.mcp_list_tools
    return found


def _spec(info: items_pb2.McpToolInfo) -> McpToolSpec:
    return McpToolSpec(
        name=info.name, input_schema=json_format.MessageToDict(info.input_schema),
        description=info.description if info.HasField("description") else None,
        annotations=json_format.MessageToDict(info.annotations) if info.HasField("annotations") else None)


def info(spec: McpToolSpec) -> items_pb2.McpToolInfo:
    out = items_pb2.McpToolInfo(name=spec.name)
    out.input_schema.update(spec.input_schema)
    if spec.description is not None:
        out.description = spec.description
    if spec.annotations:
        out.annotations.update(spec.annotations)
    return out


async def list_all(request: Request, config: McpConfig, history: list[items_pb2.Item]) -> list[Listing]:
    """The tools of every `mcp` server of the request, listed concurrently (or reused from the conversation)."""
    timeouts = Timeouts(connect=config.connect_timeout, operation=config.list_timeout)

    async def one(tool: tools_pb2.McpTool) -> Listing:
        earlier = _earlier(history, tool.server_label)
        if earlier is not None:
            specs = [_spec(i) for i in earlier.tools]
            return Listing(tool.server_label, tuple(s for s in specs if allowed(tool, s)), reused=True)
        with tracer.start_as_current_span("mcp.list_tools", kind=SpanKind.CLIENT,
                                          attributes={"mcp.server.label": tool.server_label}) as span:
            try:
                specs = await list_tools(server(tool), timeouts)
            except McpFailure as failure:
                span.set_status(Status(StatusCode.ERROR, failure.kind))
                return Listing(tool.server_label, error=str(failure))
        return Listing(tool.server_label, tuple(s for s in specs if allowed(tool, s)))

    return list(await asyncio.gather(*(one(tool) for _, tool in mcp_tools(request))))


def functions(request: Request, listings: list[Listing]) -> tuple[list[tools_pb2.FunctionTool], dict[str, McpRoute]]:
    """The functions the upstream sees for the listed tools, and what each one is."""
    by_label = {tool.server_label: tool for _, tool in mcp_tools(request)}
    out: list[tools_pb2.FunctionTool] = []
    routes: dict[str, McpRoute] = {}
    for listing in listings:
        tool = by_label[listing.server_label]
        for spec in listing.tools:
            name = function_name(listing.server_label, spec.name)
            if name in routes:
                continue  # two tool names that read the same once made safe: the first wins
            routes[name] = McpRoute(listing.server_label, spec.name, needs_approval(tool, spec))
            function = tools_pb2.FunctionTool(name=name)
            function.parameters.update(spec.input_schema or {"type": "object", "properties": {}})
            description = spec.description or ""
            if tool.HasField("server_description"):
                description = f"{tool.server_description} {description}".strip()
            if description:
                function.description = description
            out.append(function)
    return out, routes


def call_pair(call_id: str, label: str, name: str, arguments: str, output: str) -> list[items_pb2.Item]:
    call = items_pb2.Item(function_call=items_pb2.FunctionCall(
        call_id=call_id, name=function_name(label, name), arguments=arguments or "{}",
        status=items_pb2.ITEM_STATUS_COMPLETED))
    result = items_pb2.Item(function_call_output=items_pb2.FunctionCallOutput(
        call_id=call_id, output=content_pb2.Content(text=output), status=items_pb2.ITEM_STATUS_COMPLETED))
    return [call, result]


def call_output(call: items_pb2.McpCall) -> str:
    """What the upstream reads as the result of a call: its output, or its error."""
    if call.HasField("output"):
        return call.output
    error = call.error
    kind = error.WhichOneof("error")
    if kind == "execution":
        blocks = json_format.MessageToDict(error.execution.content) if error.execution.HasField("content") else []
        texts = [str(b.get("text", "")) for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
        return "Error: " + ("\n".join(texts) or "the tool failed.")
    if kind in ("protocol", "http"):
        return f"Error: {getattr(error, kind).message}"
    return "Error: the call did not complete."


def to_upstream(item: items_pb2.Item, known: Mapping[str, items_pb2.Item]) -> list[items_pb2.Item] | None:
    """How an MCP item reads to an upstream (a function call and its output), or None for other items.
    Listings and approval requests read as nothing; a denied approval reads as a call the user refused."""
    kind = item.WhichOneof("item")
    if kind in ("mcp_list_tools", "mcp_approval_request"):
        return []
    if kind == "mcp_call":
        call = item.mcp_call
        return call_pair(call.id, call.server_label, call.name, call.arguments, call_output(call))
    if kind == "mcp_approval_response":
        answer = item.mcp_approval_response
        asked = known.get(answer.approval_request_id)
        if answer.approve or asked is None or asked.WhichOneof("item") != "mcp_approval_request":
            return []  # an approved call is in the output as an `mcp_call`
        request = asked.mcp_approval_request
        return call_pair(request.id, request.server_label, request.name, request.arguments, DENIED_OUTPUT)
    return None


def _answers(item: items_pb2.Item) -> str | None:
    """The approval request an item answers (an approval response, or a call run after approval), if any."""
    kind = item.WhichOneof("item")
    if kind == "mcp_approval_response":
        return item.mcp_approval_response.approval_request_id
    if kind == "mcp_call" and item.mcp_call.HasField("approval_request_id"):
        return item.mcp_call.approval_request_id
    return None


def approvals(request: Request, inputs: list[items_pb2.Item], history: list[items_pb2.Item]
              ) -> list[tuple[items_pb2.McpApprovalRequest, bool]]:
    """The approval responses of the input with the requests they answer (earlier in the conversation). Each
    request is answered once."""
    asked = {i.mcp_approval_request.id: i.mcp_approval_request for i in [*history, *inputs]
             if i.WhichOneof("item") == "mcp_approval_request"}
    answered = {found for found in map(_answers, history) if found is not None}
    labels = {tool.server_label for _, tool in mcp_tools(request)}
    out: list[tuple[items_pb2.McpApprovalRequest, bool]] = []
    for index, item in enumerate(inputs):
        if item.WhichOneof("item") != "mcp_approval_response":
            if (earlier := _answers(item)) is not None:
                answered.add(earlier)
            continue
        answer = item.mcp_approval_response
        where = f"input[{index}].approval_request_id"
        found = asked.get(answer.approval_request_id)
        if found is None:
            raise invalid(f"No mcp_approval_request with id {answer.approval_request_id!r} in this conversation.",
                          where, code="item_not_found")
        if answer.approval_request_id in answered:
            raise invalid(f"The approval request {answer.approval_request_id!r} was already answered.", where)
        answered.add(answer.approval_request_id)
        if found.server_label not in labels:
            raise invalid(f"The approved call needs the mcp tool with server_label {found.server_label!r} in "
                          "'tools'.", where)
        out.append((found, answer.approve))
    return out


def parse_arguments(arguments: str) -> dict[str, object] | None:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def without_secrets(tool: tools_pb2.Tool) -> tools_pb2.Tool:
    """A copy of a tool without the `mcp` headers and authorization (which are never stored or echoed)."""
    copy = tools_pb2.Tool()
    copy.CopyFrom(tool)
    if copy.WhichOneof("tool") == "mcp":
        copy.mcp.headers.clear()
        copy.mcp.ClearField("authorization")
    return copy




def without_request_secrets(request: Request) -> Request:
    """The request as it may be stored: `mcp` tools without headers and authorization."""
    if not mcp_tools(request):
        return request
    copy = Request()
    copy.CopyFrom(request)
    for tool in copy.tools:
        if tool.WhichOneof("tool") == "mcp":
            tool.mcp.headers.clear()
            tool.mcp.ClearField("authorization")
    return copy


# A queued background request keeps its MCP headers sealed under this header name, for the worker that runs it.
SEALED_HEADER = "x-switchboard-sealed"
_SECRETS_PURPOSE = "mcp-secrets.v1"


def seal_secrets(request: Request, sealer: Sealer) -> Request:
    """The request as a background job stores it: each `mcp` tool's headers and authorization sealed."""
    if not mcp_tools(request):
        return request
    copy = Request()
    copy.CopyFrom(request)
    for tool in copy.tools:
        mcp = tool.mcp
        if tool.WhichOneof("tool") != "mcp" or not (mcp.headers or mcp.HasField("authorization")):
            continue
        secret = {"headers": dict(mcp.headers), "authorization": mcp.authorization or None}
        mcp.headers.clear()
        mcp.ClearField("authorization")
        mcp.headers[SEALED_HEADER] = sealer.seal(orjson.dumps(secret), _SECRETS_PURPOSE)
    return copy


def open_secrets(request: Request, sealer: Sealer) -> Request:
    """The inverse of :func:`seal_secrets`, in the worker that runs the job."""
    if not any(SEALED_HEADER in tool.headers for _, tool in mcp_tools(request)):
        return request
    copy = Request()
    copy.CopyFrom(request)
    for index, tool in enumerate(copy.tools):
        mcp = tool.mcp
        if tool.WhichOneof("tool") != "mcp" or SEALED_HEADER not in mcp.headers:
            continue
        secret = orjson.loads(sealer.open(mcp.headers.pop(SEALED_HEADER), _SECRETS_PURPOSE, f"tools[{index}].headers"))
        mcp.headers.update(secret["headers"])
        if secret.get("authorization"):
            mcp.authorization = secret["authorization"]
    return copy
