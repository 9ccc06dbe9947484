"""What every HTTP upstream shares: one pooled keep-alive client, per-call timeouts from the caller's deadline,
SSE reading, cancellation (closing the response), error mapping, and draining so connections go back to the pool.

A provider supplies the request body, how to read one JSON body, and a folder that turns SSE events into deltas.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any, Protocol

import grpc
import httpx
import orjson
from httpx_sse import aconnect_sse

from service.errors import UpstreamError
from service.providers.base import Delta, Turn

JSON = dict[str, Any]
_DRAIN_SECONDS = 1.0


class EventFolder(Protocol):
    """Folds a stream's SSE events into deltas. ``done`` means the upstream sent its last event."""

    done: bool

    def feed_sse(self, event: str, data: str) -> list[Delta]: ...

    def end(self) -> list[Delta]:
        """The deltas that wait for the end (usage, finish); raises when the stream broke off."""
        ...


def protocol_error(message: str) -> UpstreamError:
    return UpstreamError(message, code="upstream_protocol_error", retryable=False)


def interrupted() -> UpstreamError:
    return UpstreamError("the upstream stream ended before the response was complete",
                         code="upstream_stream_interrupted", retryable=False)


def loads(data: bytes | str) -> JSON:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise protocol_error("the upstream sent malformed JSON") from None
    if type(value) is not dict:
        raise protocol_error("the upstream sent JSON that is not an object")
    return value


def unavailable(exc: Exception) -> UpstreamError:
    # The exception's class says what failed without leaking hosts or addresses to the client.
    return UpstreamError(f"could not reach the upstream ({type(exc).__name__})", code="upstream_unavailable",
                         retryable=True)


class HttpProvider(ABC):
    """The shared HTTP side of a provider. Subclasses implement ``body``, ``parse_body``, ``folder`` and
    ``status_error``."""

    def __init__(self, name: str, *, url: str, headers: dict[str, str], connect_timeout: float,
                 default_timeout: float, max_connections: int) -> None:
        self.name = name
        self._url = url
        self._connect_timeout = connect_timeout
        self._default_timeout = default_timeout
        self._client = httpx.AsyncClient(
            headers={"content-type": "application/json", **headers},
            timeout=httpx.Timeout(default_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            http1=True,
            http2=False,
        )

    # ------------------------------------------------------------ hooks

    @abstractmethod
    def body(self, turn: Turn) -> JSON:
        """The request body for a turn."""

    @abstractmethod
    def parse_body(self, data: JSON) -> list[Delta]:
        """The deltas of one whole (non-streamed) response body."""

    @abstractmethod
    def folder(self) -> EventFolder:
        """A fresh folder for one streamed response."""

    @abstractmethod
    def status_error(self, status: int, body: bytes, headers: Any) -> Exception:
        """The error for a non-2xx answer."""

    # ------------------------------------------------------------ calls

    async def aclose(self) -> None:
        await self._client.aclose()

    def _timeout(self, seconds: float | None) -> httpx.Timeout:
        # httpx timeouts bound each wait (connect, every read), not the whole call; past the caller's
        # deadline the caller cancels us, and cancellation closes the response.
        total = self._default_timeout if seconds is None else max(seconds, 0.001)
        return httpx.Timeout(total, connect=min(self._connect_timeout, total))

    async def stream(self, turn: Turn) -> AsyncGenerator[Delta, None]:
        content = orjson.dumps(self.body(turn))
        timeout = self._timeout(turn.timeout)
        started = False  # response headers arrived: errors from here on come mid-response
        try:
            if turn.stream:
                async with aconnect_sse(self._client, "POST", self._url, content=content,
                                        timeout=timeout) as source:
                    response = source.response
                    if not response.is_success:
                        raise self.status_error(response.status_code, await response.aread(), response.headers)
                    started = True
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        # The server ignored stream=true and answered with one JSON body.
                        for delta in self.parse_body(loads(await response.aread())):
                            yield delta
                        return
                    folder = self.folder()
                    async with aclosing(source.aiter_sse()) as events:
                        async for sse in events:
                            for delta in folder.feed_sse(sse.event, sse.data):
                                yield delta
                            if folder.done:
                                break
                        for delta in folder.end():
                            yield delta
                        if folder.done:
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
                        raise self.status_error(response.status_code, body, response.headers)
                started = True
                for delta in self.parse_body(loads(body)):
                    yield delta
        except httpx.ConnectError as exc:
            raise unavailable(exc) from exc
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout) and timeout.connect == self._connect_timeout:
                raise unavailable(exc) from exc
            limit = timeout.read if timeout.read is not None else self._default_timeout
            # Past the caller's deadline a retry cannot help; past our own default timeout it may.
            raise UpstreamError(f"the upstream did not respond within {limit:g}s", code="upstream_timeout",
                                status=grpc.StatusCode.DEADLINE_EXCEEDED,
                                retryable=turn.timeout is None and not started) from exc
        except httpx.TransportError as exc:
            # RemoteProtocolError/ReadError after the headers: the body broke off.
            if started:
                raise interrupted() from exc
            raise unavailable(exc) from exc
