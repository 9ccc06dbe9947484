"""A provider for any OpenAI Chat Completions server: OpenAI, vLLM, llama.cpp, SGLang, OpenRouter, ...

The request/response translation lives in :mod:`service.providers.chat_translate`; this module owns the
HTTP side: one pooled client per provider, SSE reading, timeouts, cancellation and error mapping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any, Literal

import grpc
import httpx
import orjson
from httpx_sse import aconnect_sse

from service.errors import UpstreamError
from service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
)
from service.providers.chat_translate import (
    build_body,
    finish_reason,
    interrupted,
    logprobs_of,
    parse_completion,
    protocol_error,
    status_error,
    stream_error,
    usage_delta,
)

_NO_FUNCTION: dict[str, Any] = {}
_DRAIN_SECONDS = 1.0


class OpenAIChatProvider:
    """``POST {base_url}/chat/completions``, streamed over SSE or as one JSON body."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout: float = 5.0,
        default_timeout: float = 600.0,
        max_connections: int = 100,
        developer_role: bool = True,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        """``developer_role=False`` sends developer messages as ``system`` for servers whose chat
        templates know no ``developer`` role. ``max_tokens`` is the limit every server understands;
        OpenAI's reasoning models only take ``max_completion_tokens``, hence ``max_tokens_param``.
        """
        self.name = name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._developer_role = developer_role
        self._max_tokens_param = max_tokens_param
        self._connect_timeout = connect_timeout
        self._default_timeout = default_timeout
        default_headers = {"content-type": "application/json"}
        if api_key:
            default_headers["authorization"] = f"Bearer {api_key}"
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
        content = orjson.dumps(build_body(turn, developer_role=self._developer_role,
                                          max_tokens_param=self._max_tokens_param))
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
                        # The server ignored stream=true and answered with one JSON body.
                        for delta in parse_completion(_loads(await response.aread())):
                            yield delta
                        return
                    finish: str | None = None
                    usage: Any = None
                    saw_tools = done = False
                    async with aclosing(source.aiter_sse()) as events:
                        async for sse in events:
                            data = sse.data
                            if data == "[DONE]":
                                done = True
                                break
                            if not data:
                                continue
                            chunk = _loads(data)
                            if sse.event == "error" or chunk.get("error") is not None:
                                raise stream_error(chunk)
                            choices = chunk.get("choices")
                            if choices:
                                choice = choices[0]
                                delta = choice.get("delta")
                                if delta:
                                    text = delta.get("reasoning_content") or delta.get("reasoning")
                                    if text:
                                        yield ReasoningDelta(text)
                                    text = delta.get("content")
                                    if text:
                                        yield TextDelta(text, logprobs_of(choice))
                                    text = delta.get("refusal")
                                    if text:
                                        yield RefusalDelta(text)
                                    calls = delta.get("tool_calls")
                                    if calls:
                                        saw_tools = True
                                        for position, call in enumerate(calls):
                                            fn = call.get("function") or _NO_FUNCTION
                                            yield ToolCallDelta(call.get("index", position), call.get("id"),
                                                                fn.get("name"), fn.get("arguments") or "")
                                reason = choice.get("finish_reason")
                                if reason:
                                    finish = reason
                            if chunk.get("usage"):
                                usage = chunk["usage"]
                        if not done and finish is None:
                            raise interrupted()
                        # Finish waits for the end: usage may come in a chunk after the finish_reason.
                        if usage:
                            yield usage_delta(usage)
                        yield Finish(finish_reason(finish, saw_tools))
                        if done:
                            # Only a body read to its end (just after [DONE]) returns the connection to
                            # the pool; a server that never ends it must not hold the caller up.
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
                for delta in parse_completion(_loads(body)):
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


def _loads(data: bytes | str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise protocol_error("the upstream sent malformed JSON") from None
    if type(value) is not dict:
        raise protocol_error("the upstream sent JSON that is not an object")
    return value


def _unavailable(exc: Exception) -> UpstreamError:
    # The exception's class says what failed without leaking hosts or addresses to the client.
    return UpstreamError(f"could not reach the upstream ({type(exc).__name__})", code="upstream_unavailable",
                         retryable=True)
