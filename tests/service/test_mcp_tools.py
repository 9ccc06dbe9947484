"""The `mcp` tool rules without a server: configuration, allowed servers, tool filters, approval rules, upstream
function names, how MCP items read to an upstream, and the sealing of headers for background jobs."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.edge import codec
from switchboard.responses.v1 import items_pb2, responses_service_pb2, tools_pb2
from switchboard.service.mcp import tools as mcp_tools
from switchboard.service.mcp.client import McpToolSpec
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import McpConfig, from_dict
from switchboard.shared.crypto import Sealer
from switchboard.shared.errors import ApiError

Request = responses_service_pb2.CreateResponseRequest
ADD = McpToolSpec(name="add", input_schema={"type": "object"}, annotations={"readOnlyHint": True})
DROP = McpToolSpec(name="drop_table", input_schema={"type": "object"})


def request(*tools: dict[str, Any]) -> Request:
    return codec.decode({"model": "m", "input": "x", "tools": list(tools)}, Request)


def mcp(**fields: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "s", "server_url": "https://mcp.example.com/x", **fields}


def tool(**fields: Any) -> tools_pb2.McpTool:
    return request(mcp(**fields)).tools[0].mcp


def test_config_allows_nothing_by_default_and_checks_its_keys() -> None:
    assert from_dict({}).mcp.allowed_servers == ()
    config = from_dict({"mcp": {"allowed_servers": ["https://mcp.example.com/"], "call_timeout": 5}}).mcp
    assert config.allows("https://mcp.example.com/x") and not config.allows("https://mcp.example.com.evil/x")
    assert config.call_timeout == 5.0
    with pytest.raises(ConfigError):
        from_dict({"mcp": {"allowed_server": []}})
    with pytest.raises(ConfigError):
        from_dict({"mcp": {"allowed_servers": ["mcp.example.com"]}})
    with pytest.raises(ConfigError):
        from_dict({"mcp": {"list_timeout": 0}})


def test_check_names_the_server_that_is_not_allowed() -> None:
    with pytest.raises(ApiError) as caught:
        mcp_tools.check(request(mcp()), McpConfig())
    assert caught.value.code == "mcp_server_not_allowed" and caught.value.param == "tools[0].server_url"
    assert "https://mcp.example.com/x" in caught.value.message
    allowed = McpConfig(allowed_servers=("https://mcp.example.com/",))
    mcp_tools.check(request(mcp()), allowed)
    for bad, param in ((request(mcp(), mcp()), "tools[1].server_label"),
                       (request(mcp(server_label="a b")), "tools[0].server_label"),
                       (request(mcp(connector_id="connector_gmail")), "tools[0].connector_id"),
                       (request({"type": "mcp", "server_label": "s"}), "tools[0].server_url"),
                       (request(mcp(), {"type": "function", "name": "mcp__s__add"}), "tools[1].name")):
        with pytest.raises(ApiError) as caught:
            mcp_tools.check(bad, allowed)
        assert caught.value.param == param


def test_allowed_tools_and_approval_rules() -> None:
    assert mcp_tools.allowed(tool(), DROP)
    assert mcp_tools.allowed(tool(allowed_tools=["add"]), ADD) and not mcp_tools.allowed(tool(allowed_tools=["add"]),
                                                                                         DROP)
    assert mcp_tools.allowed(tool(allowed_tools={"read_only": True}), ADD)
    assert not mcp_tools.allowed(tool(allowed_tools={"read_only": True}), DROP)
    assert mcp_tools.needs_approval(tool(), ADD), "OpenAI's default is always"
    assert not mcp_tools.needs_approval(tool(require_approval="never"), DROP)
    assert mcp_tools.needs_approval(tool(require_approval="always"), ADD)
    split = tool(require_approval={"never": {"read_only": True}})
    assert not mcp_tools.needs_approval(split, ADD) and mcp_tools.needs_approval(split, DROP)
    both = tool(require_approval={"never": {"tool_names": ["add", "drop_table"]}, "always": {"tool_names": ["add"]}})
    assert mcp_tools.needs_approval(both, ADD) and not mcp_tools.needs_approval(both, DROP)


def test_functions_get_names_that_cannot_collide() -> None:
    req = request(mcp(server_label="a"), mcp(server_label="b", server_description="Math."))
    listings = [mcp_tools.Listing("a", (ADD, DROP)), mcp_tools.Listing("b", (ADD,))]
    functions, routes = mcp_tools.functions(req, listings)
    assert [f.name for f in functions] == ["mcp__a__add", "mcp__a__drop_table", "mcp__b__add"]
    assert routes["mcp__b__add"] == mcp_tools.McpRoute("b", "add", approval=True)
    assert functions[2].description == "Math."
    assert mcp_tools.function_name("s", "do.thing/now") == "mcp__s__do_thing_now"


def test_mcp_items_read_as_calls_and_outputs_upstream() -> None:
    call = items_pb2.Item(mcp_call=items_pb2.McpCall(id="mcp_1", server_label="s", name="add", arguments='{"a":1}',
                                                     output="2"))
    function_call, output = mcp_tools.to_upstream(call, {}) or []
    assert (function_call.function_call.name, function_call.function_call.call_id) == ("mcp__s__add", "mcp_1")
    assert output.function_call_output.output.text == "2"
    asked = items_pb2.Item(mcp_approval_request=items_pb2.McpApprovalRequest(id="mcpr_1", server_label="s",
                                                                             name="add", arguments="{}"))
    assert mcp_tools.to_upstream(asked, {}) == []
    denied = items_pb2.Item(mcp_approval_response=items_pb2.McpApprovalResponse(approval_request_id="mcpr_1"))
    pair = mcp_tools.to_upstream(denied, {"mcpr_1": asked}) or []
    assert pair[1].function_call_output.output.text == mcp_tools.DENIED_OUTPUT
    assert mcp_tools.to_upstream(items_pb2.Item(message=items_pb2.Message()), {}) is None


def test_secrets_are_stripped_for_storage_and_sealed_for_background_jobs() -> None:
    req = request(mcp(headers={"Authorization": "Bearer sk-secret-1"}, authorization="tok-secret-2"))
    stripped = mcp_tools.without_request_secrets(req)
    assert b"secret" not in stripped.SerializeToString() and req.tools[0].mcp.headers
    sealer = Sealer(bytes(32))
    sealed = mcp_tools.seal_secrets(req, sealer)
    assert b"secret" not in sealed.SerializeToString()
    opened = mcp_tools.open_secrets(sealed, sealer)
    assert opened == req
    assert mcp_tools.server(opened.tools[0].mcp).headers == {"Authorization": "Bearer tok-secret-2"}
    assert "sk-secret" not in repr(mcp_tools.server(req.tools[0].mcp))
