"""Server-side MCP tools end to end: local MCP servers (streamable HTTP and HTTP+SSE, built with the `mcp`
package's server API), the fake upstream deciding to call their tools, and Switchboard (through Envoy, the edge,
gRPC, WebSocket and background mode) listing them, running the calls, asking for approval, and keeping request
headers out of the store, the logs and the exported spans."""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai.types.responses import ResponseOutputItem, ResponseStreamEvent, Tool
from pydantic import BaseModel, TypeAdapter
from websockets.sync.client import connect

from switchboard.edge import codec
from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc
from tests.e2e.stack import API_KEY, Process, Stack, free_port, start_stack
from tests.e2e.test_http import sse_events
from tests.fakes.otlp import Collector

pytestmark = pytest.mark.timeout(120)
AUTH = {"authorization": f"Bearer {API_KEY}"}
JSON = dict[str, Any]
_EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_ITEMS: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)
_TOOLS: TypeAdapter[Any] = TypeAdapter(Tool)
# The response's time budget for MCP work in this stack (seconds); the `sleep` tool is asked to sleep 30.
BUDGET = 4.0


def _start_mcp(transport: str) -> tuple[Process, str]:
    process = Process([sys.executable, "-m", "tests.fakes.mcp_server", "--port", str(free_port()),
                       "--transport", transport], name=f"mcp server ({transport})")
    line = process.wait_for("LISTENING", timeout=30)
    return process, line.split()[1]


@pytest.fixture(scope="module")
def mcp_http() -> Iterator[str]:
    process, url = _start_mcp("streamable-http")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def mcp_sse() -> Iterator[str]:
    process, url = _start_mcp("sse")
    yield url
    process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: str, collector: Collector,
          native_upstreams: dict[str, str]) -> Iterator[Stack]:
    """Overrides the session stack: MCP servers on 127.0.0.1 allowed, a short time budget, no local model."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    extra = {"mcp": {"allowed_servers": ["http://127.0.0.1:"], "response_timeout": BUDGET, "call_timeout": 60,
                     "list_timeout": 10, "connect_timeout": 2}}
    started = start_stack(Path(tmp_path_factory.mktemp("mcp")), upstream, env=env, extra=extra, local_model=False,
                          more_upstreams=native_upstreams)
    yield started
    started.stop()


def mcp_tool(url: str, **fields: Any) -> JSON:
    return {"type": "mcp", "server_label": "tools", "server_url": url, **fields}


def strict(model: Any, data: Any, where: str = "") -> None:
    """Every key of ``data`` is a field of the openai-python type it parsed into (recursively)."""
    if isinstance(model, BaseModel) and isinstance(data, dict):
        fields = type(model).model_fields
        unknown = set(data) - set(fields)
        assert not unknown, f"{where or type(model).__name__}: keys openai-python does not type: {unknown}"
        for key, value in data.items():
            strict(getattr(model, key), value, f"{where}.{key}")
    elif isinstance(model, list) and isinstance(data, list):
        for index, (inner, value) in enumerate(zip(model, data, strict=True)):
            strict(inner, value, f"{where}[{index}]")


def check_item(item: JSON) -> None:
    if item["type"].startswith("mcp"):
        strict(_ITEMS.validate_python(item), item)


def check_response(data: JSON) -> None:
    """The MCP items and tools of a response parse strictly as openai-python's types."""
    for item in data["output"]:
        check_item(item)
    for tool in data["tools"]:
        if tool["type"] == "mcp":
            strict(_TOOLS.validate_python(tool), tool)


def check_events(events: list[JSON]) -> JSON:
    """Each event parses strictly as openai-python's type; sequence numbers, output indexes and item ids agree;
    every added item is done before the terminal event; the final output is the done items. Returns the final
    response."""
    assert events and events[0]["type"] == "response.created"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        if "mcp" in event["type"]:
            strict(_EVENTS.validate_python(event), event)
        if "item" in event:
            check_item(event["item"])
    terminal = [e for e in events if e["type"] in ("response.completed", "response.incomplete", "response.failed")]
    assert terminal == [events[-1]]
    added: dict[int, JSON] = {}
    done: dict[int, JSON] = {}
    arguments: dict[str, str] = {}
    for event in events[1:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert event["output_index"] == len(added) and event["output_index"] not in done
            added[event["output_index"]] = event["item"]
        elif kind == "response.output_item.done":
            assert event["output_index"] in added and event["output_index"] not in done
            assert event["item"]["id"] == added[event["output_index"]]["id"]
            done[event["output_index"]] = event["item"]
        elif "item_id" in event:
            index = event["output_index"]
            assert index in added and index not in done, f"{kind} outside its item"
            assert added[index]["id"] == event["item_id"]
            if kind == "response.mcp_call_arguments.delta":
                arguments[event["item_id"]] = arguments.get(event["item_id"], "") + event["delta"]
            elif kind == "response.mcp_call_arguments.done":
                assert arguments.pop(event["item_id"]) == event["arguments"]
    final: JSON = events[-1]["response"]
    assert sorted(done) == list(range(len(added)))
    assert [done[i] for i in sorted(done)] == final["output"]
    check_response(final)
    return final


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    assert stack.envoy is not None
    with httpx.Client(base_url=stack.envoy, headers=AUTH, timeout=60) as session:
        yield session


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.envoy}/v1", api_key=API_KEY, max_retries=0, timeout=60) as sdk:
        yield sdk


def create(http: httpx.Client, body: JSON) -> JSON:
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    data: JSON = reply.json()
    check_response(data)
    return data


def stream(http: httpx.Client, body: JSON) -> list[JSON]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        events, names = sse_events(reply)
    assert names == [e["type"] for e in events]
    return events


def kinds(output: list[JSON]) -> list[str]:
    return [item["type"] for item in output]


# ------------------------------------------------------------------ listing and the call loop


def test_two_call_loop_unary_and_streamed_through_envoy(http: httpx.Client, mcp_http: str) -> None:
    body = {"model": "fake/tool-each", "input": "add, then echo",
            "tools": [mcp_tool(mcp_http, allowed_tools=["add", "echo"], require_approval="never")]}
    data = create(http, body)
    assert data["status"] == "completed"
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    listing, add, echo, answer = data["output"]
    assert listing["server_label"] == "tools" and listing.get("error") is None
    assert [t["name"] for t in listing["tools"]] == ["add", "echo"]
    assert listing["tools"][0]["input_schema"]["required"] == ["a", "b"]
    assert listing["tools"][0]["annotations"]["readOnlyHint"] is True
    assert (add["name"], json.loads(add["arguments"]), add["output"], add["error"]) == ("add", {"a": 2, "b": 2}, "4",
                                                                                        None)
    assert (echo["name"], echo["output"], echo["status"]) == ("echo", "echo hi", "completed")
    assert data["output_text"] == "tool said: 4 | echo hi"
    # Usage adds up the three upstream calls.
    assert data["usage"]["output_tokens"] > 6

    events = stream(http, body)
    final = check_events(events)
    assert kinds(final["output"]) == kinds(data["output"]) and final["output_text"] == data["output_text"]
    names = [e["type"] for e in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.mcp_list_tools.in_progress"]
    assert names[4:6] == ["response.mcp_list_tools.completed", "response.output_item.done"]
    call = names[6:names.index("response.output_item.done", 6) + 1]
    assert call[:2] == ["response.output_item.added", "response.mcp_call.in_progress"]
    assert call[-4:] == ["response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                         "response.mcp_call.completed", "response.output_item.done"][-len(call[-4:]):]
    assert names.count("response.mcp_call.completed") == 2


@pytest.mark.parametrize(("model", "expected"), [
    ("anthropic/tool-call", ["mcp_list_tools", "message", "mcp_call", "message"]),
    ("responses/tool-call", ["mcp_list_tools", "mcp_call", "message"]),
])
def test_the_loop_works_with_every_provider_kind(http: httpx.Client, mcp_http: str, model: str,
                                                 expected: list[str]) -> None:
    """Anthropic Messages and native Responses upstreams (their fakes call the first tool with {"x": 1})."""
    body = {"model": model, "input": "double it",
            "tools": [mcp_tool(mcp_http, allowed_tools=["double"], require_approval="never")]}
    final = check_events(stream(http, body))
    assert kinds(final["output"]) == expected
    call = final["output"][expected.index("mcp_call")]
    assert (call["name"], json.loads(call["arguments"]), call["output"]) == ("double", {"x": 1}, "2")
    assert final["output"][-1]["content"][0]["text"] == "tool said: 2"


def test_sse_transport_server(http: httpx.Client, mcp_sse: str) -> None:
    assert mcp_sse.endswith("/sse")
    data = create(http, {"model": "fake/tool-each", "input": "add",
                         "tools": [mcp_tool(mcp_sse, allowed_tools=["add"], require_approval="never")]})
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call", "message"]
    assert data["output"][1]["output"] == "4" and data["output_text"] == "tool said: 4"


def test_sdk_types_and_allowed_tools_filter(client: openai.OpenAI, mcp_http: str) -> None:
    response = client.responses.create(
        model="fake/tool-each", input="read-only tools only",
        tools=[{"type": "mcp", "server_label": "tools", "server_url": mcp_http,  # type: ignore[list-item]
                "allowed_tools": {"read_only": True}, "require_approval": "never"}])
    listing = response.output[0]
    assert listing.type == "mcp_list_tools"
    assert sorted(t.name for t in listing.tools) == ["add", "echo"]
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert sorted(c.name for c in calls) == ["add", "echo"]
    assert response.output[-1].type == "message"


def test_failing_tool_is_a_failed_call_the_model_reads(http: httpx.Client, mcp_http: str) -> None:
    body = {"model": "fake/tool-each", "input": "explode",
            "tools": [mcp_tool(mcp_http, allowed_tools=["explode"], require_approval="never")]}
    events = stream(http, body)
    final = check_events(events)
    assert final["status"] == "completed"
    call = final["output"][1]
    assert call["type"] == "mcp_call" and call["status"] == "failed" and call["output"] is None
    assert call["error"]["type"] == "mcp_tool_execution_error"
    assert "explode" in json.dumps(call["error"]["content"])
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert final["output_text"].startswith("tool said: Error:")


def test_server_that_is_down_fails_the_listing_not_the_request(http: httpx.Client) -> None:
    down = f"http://127.0.0.1:{free_port()}/mcp"
    events = stream(http, {"model": "fake/tool-each", "input": "nobody home", "tools": [mcp_tool(down)]})
    final = check_events(events)
    assert final["status"] == "completed"
    listing = final["output"][0]
    assert listing["type"] == "mcp_list_tools" and listing["tools"] == []
    assert "could not be reached" in listing["error"]
    assert "response.mcp_list_tools.failed" in [e["type"] for e in events]
    assert kinds(final["output"]) == ["mcp_list_tools", "message"]


def test_server_not_allowed_is_a_400_naming_it(http: httpx.Client) -> None:
    reply = http.post("/v1/responses", json={"model": "fake/tool-each", "input": "x",
                                             "tools": [mcp_tool("http://10.1.2.3/mcp")]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert "http://10.1.2.3/mcp" in error["message"] and error["param"] == "tools[0].server_url"
    assert error["code"] == "mcp_server_not_allowed"


def test_time_budget_ends_incomplete(http: httpx.Client, mcp_http: str) -> None:
    started = time.monotonic()
    data = create(http, {"model": "fake/tool-each", "input": "sleep",
                         "tools": [mcp_tool(mcp_http, allowed_tools=["sleep"], require_approval="never")]})
    assert time.monotonic() - started < 25  # the tool would sleep 30 s
    assert data["status"] == "incomplete" and data["incomplete_details"]["reason"] == "max_messages"
    call = data["output"][1]
    assert call["type"] == "mcp_call" and call["status"] == "failed" and call["error"]["type"] == "http_error"
    assert "time budget" in call["error"]["message"]


def test_max_tool_calls_ends_incomplete(http: httpx.Client, mcp_http: str) -> None:
    data = create(http, {"model": "fake/tool-each", "input": "two calls, one allowed", "max_tool_calls": 1,
                         "tools": [mcp_tool(mcp_http, allowed_tools=["add", "echo"], require_approval="never")]})
    assert data["status"] == "incomplete" and data["incomplete_details"]["reason"] == "max_messages"
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call"]


def test_client_function_still_ends_the_turn(http: httpx.Client, mcp_http: str) -> None:
    lookup = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    data = create(http, {"model": "fake/tool-each", "input": "mcp first, then mine",
                         "tools": [mcp_tool(mcp_http, allowed_tools=["add"], require_approval="never"), lookup]})
    assert data["status"] == "completed"
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call", "function_call"]
    assert data["output"][2]["name"] == "lookup"


# ------------------------------------------------------------------ approvals


def test_approval_approve_then_deny(http: httpx.Client, mcp_http: str) -> None:
    tools = [mcp_tool(mcp_http, allowed_tools=["add"])]  # require_approval defaults to always
    first = create(http, {"model": "fake/tool-each", "input": "add with approval", "tools": tools})
    assert first["status"] == "completed"
    assert kinds(first["output"]) == ["mcp_list_tools", "mcp_approval_request"]
    request = first["output"][1]
    assert request["name"] == "add" and json.loads(request["arguments"]) == {"a": 2, "b": 2}

    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    events = stream(http, {"model": "fake/tool-each", "previous_response_id": first["id"], "input": [answer],
                           "tools": tools})
    approved = check_events(events)
    # The listing of the first turn is reused: no new mcp_list_tools item.
    assert kinds(approved["output"]) == ["mcp_call", "message"]
    call = approved["output"][0]
    assert call["approval_request_id"] == request["id"] and call["output"] == "4"
    assert approved["output_text"] == "tool said: 4"
    # The same request cannot be answered twice.
    again = http.post("/v1/responses", json={"model": "fake/tool-each", "previous_response_id": approved["id"],
                                             "input": [answer], "tools": tools})
    assert again.status_code == 400 and again.json()["error"]["param"] == "input[0].approval_request_id"

    denied_first = create(http, {"model": "fake/tool-each", "input": "add, denied", "tools": tools})
    refused = {"type": "mcp_approval_response", "approval_request_id": denied_first["output"][1]["id"],
               "approve": False}
    denied = create(http, {"model": "fake/tool-each", "previous_response_id": denied_first["id"],
                           "input": [refused], "tools": tools})
    assert kinds(denied["output"]) == ["message"]
    assert denied["output_text"] == "tool said: The user did not approve this tool call."


def test_store_false_client_sends_the_items_back(http: httpx.Client, mcp_http: str) -> None:
    """Without a stored chain the client resends the items: the listing is reused, the approved call runs."""
    tools = [mcp_tool(mcp_http, allowed_tools=["add"])]
    first = create(http, {"model": "fake/tool-each", "input": "stateless", "store": False, "tools": tools})
    listing, asked = first["output"]
    answer = {"type": "mcp_approval_response", "approval_request_id": asked["id"], "approve": True}
    data = create(http, {"model": "fake/tool-each", "store": False, "tools": tools,
                         "input": [{"role": "user", "content": "stateless"}, listing, asked, answer]})
    assert kinds(data["output"]) == ["mcp_call", "message"] and data["output_text"] == "tool said: 4"
    twice = http.post("/v1/responses", json={"model": "fake/tool-each", "store": False, "tools": tools,
                                             "input": [listing, asked, answer, answer]})
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "input[3].approval_request_id"
    nothing = http.post("/v1/responses", json={"model": "fake/tool-each", "store": False, "input": [listing]})
    assert nothing.status_code == 400 and nothing.json()["error"]["param"] == "input"


def test_mcp_items_as_stored_input(http: httpx.Client) -> None:
    """MCP items sent as input are stored and listed with their ids; the model reads a call and its output."""
    call = {"type": "mcp_call", "id": "mcp_client_1", "server_label": "tools", "name": "add", "arguments": "{}",
            "output": "4"}
    data = create(http, {"model": "fake/tool-each", "input": [{"role": "user", "content": "earlier"}, call,
                                                              {"type": "mcp_call", "server_label": "tools",
                                                               "name": "echo", "arguments": "{}"}]})
    assert data["output_text"].startswith("tool said: 4 | Error")
    items = http.get(f"/v1/responses/{data['id']}/input_items", params={"order": "asc"}).json()["data"]
    assert [i["type"] for i in items] == ["message", "mcp_call", "mcp_call"]
    assert items[1]["id"] == "mcp_client_1" and items[2]["id"].startswith("mcp_")


def test_per_tool_approval_filter(http: httpx.Client, mcp_http: str) -> None:
    tools = [mcp_tool(mcp_http, allowed_tools=["add", "explode"],
                      require_approval={"never": {"tool_names": ["add"]}})]
    data = create(http, {"model": "fake/tool-each", "input": "add runs, explode asks", "tools": tools})
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call", "mcp_approval_request"]
    assert data["output"][1]["name"] == "add" and data["output"][2]["name"] == "explode"


def test_unknown_approval_request_is_a_400(http: httpx.Client, mcp_http: str) -> None:
    first = create(http, {"model": "fake/echo", "input": "hello"})
    reply = http.post("/v1/responses", json={
        "model": "fake/tool-each", "previous_response_id": first["id"], "tools": [mcp_tool(mcp_http)],
        "input": [{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}]})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input[0].approval_request_id"


# ------------------------------------------------------------------ secrets


def test_headers_are_used_but_never_stored_logged_traced_or_echoed(stack: Stack, http: httpx.Client,
                                                                   mcp_http: str, collector: Collector) -> None:
    secret = f"sk-mcp-{secrets.token_hex(12)}"
    trace_id = secrets.token_hex(16)
    reply = http.post("/v1/responses", headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}, json={
        "model": "fake/tool-each", "input": "with a token",
        "tools": [mcp_tool(mcp_http, allowed_tools=["add"], require_approval="never",
                           headers={"Authorization": f"Bearer {secret}"})]})
    assert reply.status_code == 200, reply.text
    assert secret not in reply.text
    data = reply.json()
    assert data["tools"][0]["headers"] == {} and data["output"][1]["output"] == "4"
    # The MCP server got it, for the listing and the call.
    seen = httpx.get(mcp_http.rsplit("/", 1)[0] + "/_headers").json()["authorization"]
    assert f"Bearer {secret}" in seen

    stored = http.get(f"/v1/responses/{data['id']}")
    assert stored.status_code == 200 and secret not in stored.text
    assert secret not in _database_text(stack), "the secret is not stored"
    spans = collector.wait_for(trace_id, lambda found: any(s.name.startswith("mcp.call") for s in found))
    assert any(s.name == "mcp.call add" for s in spans)
    assert secret not in repr([(s.name, s.attributes) for s in spans])
    assert secret not in "".join(stack.process.output)


def _database_text(stack: Stack) -> str:
    """Every row of every table of the stack's SQLite store, as text (blobs decoded leniently)."""
    rows: list[str] = []
    with sqlite3.connect(stack.config_path.parent / "switchboard.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (table names from the schema)
                rows.extend(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
    return "\n".join(rows)


# ------------------------------------------------------------------ the other transports


def test_grpc_unary_and_streaming(stack: Stack, mcp_http: str) -> None:
    body = {"model": "fake/tool-each", "input": "over grpc",
            "tools": [mcp_tool(mcp_http, allowed_tools=["add"], require_approval="never")]}
    request = codec.decode(body, responses_service_pb2.CreateResponseRequest)
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    with grpc.insecure_channel(stack.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        response = stub.CreateResponse(request, metadata=metadata, timeout=60)
        assert [i.WhichOneof("item") for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]
        assert response.output[1].mcp_call.output == "4"
        events = [codec.encode(e) for e in stub.StreamResponse(request, metadata=metadata, timeout=60)]
    final = check_events(events)
    assert kinds(final["output"]) == ["mcp_list_tools", "mcp_call", "message"]


def test_websocket_mode(stack: Stack, mcp_http: str) -> None:
    assert stack.envoy is not None
    url = stack.envoy.replace("http://", "ws://", 1) + "/v1/responses"
    tools = [mcp_tool(mcp_http, allowed_tools=["add"])]
    with connect(url, additional_headers=AUTH, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "response.create", "model": "fake/tool-each", "input": "ws", "store": False,
                            "tools": tools}))
        first = _ws_events(ws)
        asked = check_events(first)
        assert kinds(asked["output"]) == ["mcp_list_tools", "mcp_approval_request"]
        answer = {"type": "mcp_approval_response", "approval_request_id": asked["output"][1]["id"], "approve": True}
        ws.send(json.dumps({"type": "response.create", "model": "fake/tool-each", "store": False,
                            "previous_response_id": asked["id"], "input": [answer], "tools": tools}))
        done = check_events(_ws_events(ws))
    assert kinds(done["output"]) == ["mcp_call", "message"] and done["output_text"] == "tool said: 4"


def _ws_events(ws: Any) -> list[JSON]:
    events: list[JSON] = []
    while True:
        event = json.loads(ws.recv(timeout=60))
        assert event["type"] != "error", event
        events.append(event)
        if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
            return events


def test_background_mode(stack: Stack, http: httpx.Client, mcp_http: str) -> None:
    secret = f"sk-bg-{secrets.token_hex(8)}"
    queued = create(http, {"model": "fake/tool-each", "input": "in the background", "background": True,
                           "tools": [mcp_tool(mcp_http, allowed_tools=["add"], require_approval="never",
                                              headers={"Authorization": f"Bearer {secret}"})]})
    assert queued["status"] == "queued" and queued["tools"][0]["headers"] == {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = create_get(http, queued["id"])
        if data["status"] not in ("queued", "in_progress"):
            break
        time.sleep(0.1)
    assert data["status"] == "completed", data
    assert kinds(data["output"]) == ["mcp_list_tools", "mcp_call", "message"]
    assert data["output"][1]["output"] == "4"
    seen = httpx.get(mcp_http.rsplit("/", 1)[0] + "/_headers").json()["authorization"]
    assert f"Bearer {secret}" in seen, "the worker used the request's headers"
    assert secret not in _database_text(stack), "the queued job keeps its headers sealed"
    with http.stream("GET", f"/v1/responses/{queued['id']}", params={"stream": "true"}) as reply:
        events, _ = sse_events(reply)
    check_events(events)


def create_get(http: httpx.Client, response_id: str) -> JSON:
    reply = http.get(f"/v1/responses/{response_id}")
    assert reply.status_code == 200, reply.text
    data: JSON = reply.json()
    check_response(data)
    return data
