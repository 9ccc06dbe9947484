"""A provider for the Anthropic Messages API (``POST {base_url}/v1/messages``).

The request/response translation lives in :mod:`switchboard.service.providers.anthropic_translate`; this module owns
the HTTP side is :mod:`switchboard.service.providers.http`; this module folds stream events into deltas
(:class:`MessageStream`, pure, tested event by event).
"""

from __future__ import annotations

from typing import Any

import orjson

from switchboard.service.providers.anthropic_translate import (
    JSON,
    build_body,
    end_deltas,
    parse_message,
    status_error,
    stream_error,
)
from switchboard.service.providers.base import (
    Delta,
    ReasoningDelta,
    ReasoningOpaqueDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
)
from switchboard.service.providers.http import HttpProvider, interrupted, loads, protocol_error


class AnthropicProvider(HttpProvider):
    """Streams over SSE or takes one JSON body; either way the same deltas come out."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout: float | None = None,
        default_timeout: float | None = None,
        timeouts: dict[str, float] | None = None,
        model_timeouts: dict[str, dict[str, float]] | None = None,
        max_connections: int = 4096,
        anthropic_version: str = "2023-06-01",
        default_max_tokens: int = 4096,
    ) -> None:
        """``default_max_tokens`` fills Anthropic's required ``max_tokens`` when the request sets no
        ``max_output_tokens``. ``headers`` may add ``anthropic-beta`` flags."""
        own = {"anthropic-version": anthropic_version, **({"x-api-key": api_key} if api_key else {})}
        super().__init__(name, url=base_url.rstrip("/") + "/v1/messages", headers={**own, **(headers or {})},
                         connect_timeout=connect_timeout, default_timeout=default_timeout, timeouts=timeouts,
                         model_timeouts=model_timeouts, max_connections=max_connections)
        self._default_max_tokens = default_max_tokens

    def body(self, turn: Turn) -> JSON:
        return build_body(turn, default_max_tokens=self._default_max_tokens)

    def parse_body(self, data: JSON) -> list[Delta]:
        return parse_message(data)

    def folder(self) -> MessageStream:
        return MessageStream()

    def status_error(self, status: int, body: bytes, headers: Any) -> Exception:
        return status_error(status, body, headers)


class MessageStream:
    """Folds the events of a streamed Messages API response into deltas, one event at a time."""

    __slots__ = ("_blocks", "_calls", "_pending", "_stop", "_text", "_usage", "done")

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # content block index -> tool call ordinal (tool_use blocks only)
        # Tool calls that streamed no input JSON yet -> the input their start event carried (normally {}).
        self._pending: dict[int, Any] = {}
        self._calls = 0
        self._usage: JSON = {}
        self._stop: str | None = None
        self._text = False
        self.done = False  # message_stop seen

    def feed_sse(self, event: str, data: str) -> list[Delta]:
        return self.feed(loads(data)) if data else []

    def feed(self, event: JSON) -> list[Delta]:
        kind = event.get("type")
        if kind == "content_block_delta":  # the hot path first
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta.get("text")
                if text:
                    self._text = True
                    return [TextDelta(text)]
            elif dtype == "thinking_delta":
                text = delta.get("thinking")
                if text:
                    return [ReasoningDelta(text)]
            elif dtype == "input_json_delta":
                fragment = delta.get("partial_json")
                ordinal = self._blocks.get(event.get("index", -1))
                if ordinal is None:
                    raise protocol_error("the upstream sent tool input for a block that is not a tool_use")
                if fragment:
                    self._pending.pop(ordinal, None)
                    return [ToolCallDelta(ordinal, arguments=fragment)]
            elif dtype == "signature_delta":
                signature = delta.get("signature")
                if signature:
                    return [ReasoningOpaqueDelta(signature)]
            # citations_delta: citations are not relayed.
            return []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use":
                ordinal = self._blocks[event.get("index", -1)] = self._calls
                self._calls += 1
                self._pending[ordinal] = block.get("input") or {}
                return [ToolCallDelta(ordinal, block.get("id"), block.get("name"))]
            # Text and thinking start empty in practice, but the schema allows content here.
            if btype == "text" and block.get("text"):
                self._text = True
                return [TextDelta(block["text"])]
            if btype == "thinking":
                out: list[Delta] = [ReasoningDelta(block["thinking"])] if block.get("thinking") else []
                # A complete block (non-streaming) carries its signature at once.
                return out + ([ReasoningOpaqueDelta(block["signature"])] if block.get("signature") else [])
            return []
        if kind == "content_block_stop":
            ordinal = self._blocks.get(event.get("index", -1))
            if ordinal is not None and ordinal in self._pending:
                # No input streamed: the arguments are the start's input, "{}" for a call without any.
                return [ToolCallDelta(ordinal, arguments=orjson.dumps(self._pending.pop(ordinal)).decode())]
            return []
        if kind == "message_delta":
            self._stop = (event.get("delta") or {}).get("stop_reason") or self._stop
            self._merge_usage(event.get("usage"))
        elif kind == "message_start":
            self._merge_usage((event.get("message") or {}).get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise stream_error(event)
        # ping, and event types Anthropic may add later, carry nothing to relay.
        return []

    def _merge_usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative and override message_start's.
        if isinstance(usage, dict):
            self._usage.update((k, v) for k, v in usage.items() if isinstance(v, int))

    def end(self) -> list[Delta]:
        """The closing deltas once the event stream is over; an unfinished message is an interruption."""
        if not self.done and self._stop is None:
            raise interrupted()
        return end_deltas(self._stop, self._text, self._calls > 0, self._usage)
