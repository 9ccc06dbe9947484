"""Tool planning: what the upstream sees and which calls may come back."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from switchboard.edge import codec
from switchboard.responses.v1 import responses_service_pb2
from switchboard.service.pipeline.requests import plan_tools
from switchboard.shared.config.settings import from_dict
from switchboard.shared.errors import ApiError

CONFIG = from_dict({"providers": [{"name": "fake", "kind": "llama-cpp"}]}, env={})
FN = {"type": "function", "name": "get", "parameters": {"type": "object"}}


def request(**body: Any) -> responses_service_pb2.CreateResponseRequest:
    return codec.decode({"input": "x", **body}, responses_service_pb2.CreateResponseRequest)


@pytest.mark.parametrize(("body", "upstream", "allowed", "omitted"), [
    ({"tools": [FN]}, ["get"], {"get"}, ()),
    # `mcp` tools are run by the gateway (switchboard.service.mcp): their functions join once the server is listed.
    ({"tools": [FN, {"type": "web_search"}, {"type": "mcp", "server_label": "x"}]}, ["get"], {"get"},
     ("web_search",)),
    ({"tools": [FN], "tool_choice": "none"}, ["get"], set(), ()),
    ({"tools": [FN, {**FN, "name": "put"}], "tool_choice": {"type": "function", "name": "put"}}, ["get", "put"],
     {"put"}, ()),
    ({"tools": [FN, {**FN, "name": "put"}],
      "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "put"}]}},
     ["put"], {"put"}, ()),
    ({"tools": [{"type": "namespace", "name": "fs", "tools": [FN]}]}, ["fs__get"], {"fs__get"}, ()),
])
def test_plan(body: dict[str, Any], upstream: list[str], allowed: set[str], omitted: tuple[str, ...]) -> None:
    plan = plan_tools(request(**body), CONFIG)
    assert [f.name for f in plan.functions] == upstream
    assert plan.allowed == allowed and plan.omitted == omitted


def test_reject_mode_names_the_tool() -> None:
    strict = dataclasses.replace(CONFIG, unsupported_tools="reject")
    with pytest.raises(ApiError) as caught:
        plan_tools(request(tools=[FN, {"type": "web_search"}]), strict)
    assert caught.value.param == "tools[1].type" and "web_search" in caught.value.message
    assert caught.value.code == "unsupported_tool"
