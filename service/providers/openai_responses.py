"""A provider for a native Responses API upstream (``POST {base_url}/responses``): OpenAI, or any server
implementing Open Responses.

The translation lives in :mod:`service.providers.openai_responses_translate`; this module owns the HTTP
side: one pooled client per provider, SSE reading, timeouts, cancellation and error mapping, as
:mod:`service.providers.openai_chat` does for Chat Completions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress

import grpc
import httpx
import orjson
from httpx_sse import aconnect_sse

from service.errors import UpstreamError
from service.providers.base import Delta, Turn
from service.providers.chat_translate import interrupted, status_error
from service.providers.openai_responses_translate import EventStream, build_body, loads, parse_response

_DRAIN_SECONDS = 1.0


class OpenAIResponsesProvider:
    """Streams over SSE or takes one JSON body; either way the same deltas come out."""

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
    ) -> None:
        self.name = name
        self._url = base_url.rstrip("/") + "/responses"
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
        content = orjson.dumps(build_body(turn))
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
                        # A server that ignored stream=true answers with one Response body.
                        for delta in parse_response(loads(await response.aread())):
                            yield delta
                        return
                    state = EventStream()
                    async with aclosing(source.aiter_sse()) as events:
                        async for sse in events:
                            data = sse.data
                            if not data or data == "[DONE]":
                                continue
                            for delta in state.feed(loads(data)):
                                yield delta
                            if state.done:
                                break
                        state.end()
                        # Only a body read to its end (OpenAI closes it after the terminal event, Open
                        # Responses servers after [DONE]) returns the connection to the pool; a server
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
                for delta in parse_response(loads(body)):
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


def _unavailable(exc: Exception) -> UpstreamError:
    # The exception's class says what failed without leaking hosts or addresses to the client.
    return UpstreamError(f"could not reach the upstream ({type(exc).__name__})", code="upstream_unavailable",
                         retryable=True)
