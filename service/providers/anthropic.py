"""A provider for the Anthropic Messages API (``POST {base_url}/v1/messages``).

The request/response translation lives in :mod:`service.providers.anthropic_translate`; this module owns
the HTTP side (one pooled client per provider, timeouts, cancellation and error mapping, as
:mod:`service.providers.openai_chat` does for Chat Completions) and the folding of stream events into
deltas (:class:`MessageStream`, pure, tested event by event).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any

import grpc
import httpx
import orjson
from httpx_sse import aconnect_sse

from service.errors import UpstreamError
from service.providers.anthropic_translate import (
    JSON,
    build_body,
    end_deltas,
    loads,
    parse_message,
    status_error,
    stream_error,
)
from service.providers.base import Delta, ReasoningDelta, ReasoningOpaqueDelta, TextDelta, ToolCallDelta, Turn
from service.providers.chat_translate import interrupted, protocol_error

_DRAIN_SECONDS = 1.0


class AnthropicProvider:
    """Streams over SSE or takes one JSON body; either way the same deltas come out."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        default_timeout: float = 600.0,
        max_connections: int = 100,
        anthropic_version: str = "2023-06-01",
        default_max_tokens: int = 4096,
    ) -> None:
        """``default_max_tokens`` fills Anthropic's required ``max_tokens`` when the request sets no
        ``max_output_tokens``. ``headers`` may add ``anthropic-beta`` flags."""
        self.name = name
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._default_max_tokens = default_max_tokens
        self._connect_timeout = connect_timeout
        self._default_timeout = default_timeout
        default_headers = {"content-type": "application/json", "anthropic-version": anthropic_version}
        if api_key:
            default_headers["x-api-key"] = api_key
        if headers:
            default_headers.update(headers)
        self._client = httpx.AsyncClient(
            headers=default_headers,
            timeout=httpx.Timeout(default_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            http1=True,
            http2=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _timeout(self, seconds: float | None) -> httpx.Timeout:
        # httpx timeouts bound each wait (connect, every read), not the whole call; past the caller's
        # deadline the caller cancels us, and cancellation closes the response.
        total = self._default_timeout if seconds is None else max(seconds, 0.001)
        return httpx.Timeout(total, connect=min(self._connect_timeout, total))

    async def stream(self, turn: Turn) -> AsyncGenerator[Delta, None]:
        content = orjson.dumps(build_body(turn, default_max_tokens=self._default_max_tokens))
        timeout = self._timeout(turn.timeout)
        started = False  # response headers arrived: errors from here on come mid-response
        try:
            if turn.stream:
                async with aconnect_sse(self._client, "POST", self._url, content=content,
                                        timeout=timeout) as source:
                    response = source.response
                    if not response.is_success:
                        raise status_error(response.status_code, await response.aread(), response.headers)
                    started = True
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        # A proxy or server that ignored stream=true answers with one JSON body.
                        for delta in parse_message(loads(await response.aread())):
                            yield delta
                        return
                    state = MessageStream()
                    async with aclosing(source.aiter_sse()) as events:
                        async for sse in events:
                            if not sse.data:
                                continue
                            for delta in state.feed(loads(sse.data)):
                                yield delta
                            if state.done:
                                break
                        # Usage and the finish wait for the end: message_delta carries both.
                        for delta in state.end():
                            yield delta
                        if state.done:
                            # Only a body read to its end returns the connection to the pool; a server
                            # that never ends it must not hold the caller up.
                            with suppress(httpx.HTTPError, TimeoutError):
                                async with asyncio.timeout(_DRAIN_SECONDS):
                                    async for _ in events:
                                        pass
            else:
                async with self._client.stream("POST", self._url, content=content, timeout=timeout) as response:
                    body = await response.aread()
                    if not response.is_success:
                        raise status_error(response.status_code, body, response.headers)
                started = True
                for delta in parse_message(loads(body)):
                    yield delta
        except httpx.ConnectError as exc:
            raise _unavailable(exc) from exc
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout) and timeout.connect == self._connect_timeout:
                raise _unavailable(exc) from exc
            limit = timeout.read if timeout.read is not None else self._default_timeout
            # Past the caller's deadline a retry cannot help; past our own default timeout it may.
            raise UpstreamError(f"the upstream did not respond within {limit:g}s", code="upstream_timeout",
                                status=grpc.StatusCode.DEADLINE_EXCEEDED,
                                retryable=turn.timeout is None and not started) from exc
        except httpx.TransportError as exc:
            # RemoteProtocolError/ReadError after the headers: the body broke off.
            if started:
                raise interrupted() from exc
            raise _unavailable(exc) from exc


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


def _unavailable(exc: Exception) -> UpstreamError:
    # The exception's class says what failed without leaking hosts or addresses to the client.
    return UpstreamError(f"could not reach the upstream ({type(exc).__name__})", code="upstream_unavailable",
                         retryable=True)
