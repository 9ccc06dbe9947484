"""The turn engine's MCP items: `mcp_list_tools`, `mcp_call` and `mcp_approval_request`, with their events.

Part of :class:`~switchboard.service.pipeline.engine.TurnEngine` (a mixin), so ids, output indexes and sequence numbers
still come from the one engine.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from switchboard.responses.v1 import events_pb2, items_pb2, response_pb2
from switchboard.service.mcp.tools import McpRoute

Event = events_pb2.StreamEvent


def new_id(prefix: str) -> str:
    """An unguessable id: 192 random bits."""
    return f"{prefix}_{secrets.token_hex(24)}"


class McpItems:
    response: response_pb2.Response
    # `mcp_call` items whose arguments are complete and that wait for their result, by output index.
    pending_mcp: list[int]
    _call_count: int

    if TYPE_CHECKING:
        def _event(self, **arm: object) -> Event: ...

        def _added(self, index: int) -> Event: ...

        def _item(self, index: int) -> items_pb2.Item: ...

        def _item_id(self, index: int) -> str: ...

        def _close_current(self, status: int) -> list[Event]: ...

    def _done(self, index: int) -> Event:
        copy = items_pb2.Item()
        copy.CopyFrom(self._item(index))
        return self._event(output_item_done=events_pb2.OutputItemEvent(output_index=index, item=copy))

    def _close_mcp(self, index: int, text: list[str], completed: bool) -> list[Event]:
        """An MCP call's arguments are complete: it waits for its result (``mcp_call_result``) unless the turn
        ends here. An approval request is done."""
        item = self._item(index)
        arguments = "".join(text) or "{}"
        if item.WhichOneof("item") == "mcp_approval_request":
            item.mcp_approval_request.arguments = arguments
            return [self._done(index)]
        call = item.mcp_call
        events: list[Event] = []
        if not text:
            events.append(self._event(mcp_call_arguments_delta=events_pb2.McpCallArgumentsDeltaEvent(
                item_id=call.id, output_index=index, delta=arguments)))
        call.arguments = arguments
        events.append(self._event(mcp_call_arguments_done=events_pb2.McpCallArgumentsDoneEvent(
            item_id=call.id, output_index=index, arguments=arguments)))
        if completed:
            self.pending_mcp.append(index)
            return events
        call.status = items_pb2.MCP_CALL_STATUS_INCOMPLETE
        return events + [self._done(index)]

    def mcp_listing(self, server_label: str, tools: list[items_pb2.McpToolInfo], error: str | None) -> list[Event]:
        """An `mcp_list_tools` item: added, in progress, then completed with the tools or failed."""
        events = self._close_current(items_pb2.ITEM_STATUS_COMPLETED)
        index = len(self.response.output)
        listing = self.response.output.add().mcp_list_tools
        listing.id, listing.server_label = new_id("mcpl"), server_label
        events.append(self._added(index))
        ref = events_pb2.McpItemEvent(item_id=listing.id, output_index=index)
        events.append(self._event(mcp_list_tools_in_progress=ref))
        if error is not None:
            listing.error = error
            events.append(self._event(mcp_list_tools_failed=ref))
        else:
            listing.tools.extend(tools)
            events.append(self._event(mcp_list_tools_completed=ref))
        return events + [self._done(index)]

    def _open_mcp(self, route: McpRoute, approval_request_id: str | None = None) -> tuple[int, list[Event]]:
        index = len(self.response.output)
        item = self.response.output.add()
        if route.approval:
            request = item.mcp_approval_request
            request.id, request.server_label, request.name = new_id("mcpr"), route.server_label, route.name
            return index, [self._added(index)]
        call = item.mcp_call
        call.id, call.server_label, call.name = new_id("mcp"), route.server_label, route.name
        call.status = items_pb2.MCP_CALL_STATUS_IN_PROGRESS
        if approval_request_id is not None:
            call.approval_request_id = approval_request_id
        return index, [self._added(index), self._event(mcp_call_in_progress=events_pb2.McpItemEvent(
            item_id=call.id, output_index=index))]

    def mcp_approved_call(self, request: items_pb2.McpApprovalRequest) -> list[Event]:
        """An approved call: an `mcp_call` with its arguments, waiting for its result like the model's calls."""
        self._call_count += 1
        events = self._close_current(items_pb2.ITEM_STATUS_COMPLETED)
        index, opened = self._open_mcp(McpRoute(request.server_label, request.name, approval=False), request.id)
        events += opened
        arguments = request.arguments or "{}"
        events.append(self._event(mcp_call_arguments_delta=events_pb2.McpCallArgumentsDeltaEvent(
            item_id=self._item_id(index), output_index=index, delta=arguments)))
        return events + self._close_mcp(index, [arguments], completed=True)

    def mcp_call_result(self, index: int, output: str | None = None,
                        error: items_pb2.McpCallError | None = None) -> list[Event]:
        """The result of a waiting call: completed with its output, or failed with its error."""
        self.pending_mcp.remove(index)
        call = self._item(index).mcp_call
        ref = events_pb2.McpItemEvent(item_id=call.id, output_index=index)
        if error is not None:
            call.error.CopyFrom(error)
            call.status = items_pb2.MCP_CALL_STATUS_FAILED
            event = self._event(mcp_call_failed=ref)
        else:
            call.output = output or ""
            call.status = items_pb2.MCP_CALL_STATUS_COMPLETED
            event = self._event(mcp_call_completed=ref)
        return [event, self._done(index)]

    def client_action_due(self, since: int) -> bool:
        """Whether the output from ``since`` holds something only the client can answer: a call of one of its
        functions or an approval request."""
        return any(item.WhichOneof("item") in ("function_call", "mcp_approval_request")
                   for item in list(self.response.output)[since:])

    def _abandon_pending(self) -> list[Event]:
        events: list[Event] = []
        for index in list(self.pending_mcp):
            self._item(index).mcp_call.status = items_pb2.MCP_CALL_STATUS_INCOMPLETE
            events.append(self._done(index))
        self.pending_mcp.clear()
        return events
