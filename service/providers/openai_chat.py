"""A provider for any OpenAI Chat Completions server: OpenAI, vLLM, llama.cpp, SGLang, OpenRouter, ...

The request/response translation lives in :mod:`switchboard.service.providers.chat_translate`; the HTTP side (pooled
client, timeouts, cancellation, error mapping) in :mod:`switchboard.service.providers.http`. This module folds stream
chunks.
"""

from __future__ import annotations

from typing import Any, Literal

from switchboard.service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Turn,
)
from switchboard.service.providers.chat_translate import (
    build_body,
    finish_reason,
    logprobs_of,
    parse_completion,
    status_error,
    stream_error,
    usage_delta,
)
from switchboard.service.providers.http import JSON, HttpProvider, interrupted, loads

_NO_FUNCTION: dict[str, Any] = {}


class OpenAIChatProvider(HttpProvider):
    """``POST {base_url}/chat/completions``, streamed over SSE or as one JSON body."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        connect_timeout: float | None = None,
        default_timeout: float | None = None,
        timeouts: dict[str, float] | None = None,
        model_timeouts: dict[str, dict[str, float]] | None = None,
        max_connections: int = 4096,
        developer_role: bool = True,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        """``developer_role=False`` sends developer messages as ``system`` for servers whose chat
        templates know no ``developer`` role. ``max_tokens`` is the limit every server understands;
        OpenAI's reasoning models only take ``max_completion_tokens``, hence ``max_tokens_param``.
        """
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(name, url=base_url.rstrip("/") + "/chat/completions", headers={**auth, **(headers or {})},
                         connect_timeout=connect_timeout, default_timeout=default_timeout, timeouts=timeouts,
                         model_timeouts=model_timeouts, max_connections=max_connections)
        self._developer_role = developer_role
        self._max_tokens_param = max_tokens_param

    def body(self, turn: Turn) -> JSON:
        return build_body(turn, developer_role=self._developer_role, max_tokens_param=self._max_tokens_param)

    def parse_body(self, data: JSON) -> list[Delta]:
        return parse_completion(data)

    def folder(self) -> ChatStream:
        return ChatStream()

    def status_error(self, status: int, body: bytes, headers: Any) -> Exception:
        return status_error(status, body, headers)


class ChatStream:
    """Folds ``chat.completion.chunk`` events. Usage and the finish wait for the end: usage may come in a chunk
    after the one with the finish_reason."""

    __slots__ = ("_finish", "_saw_tools", "_usage", "done")

    def __init__(self) -> None:
        self._finish: str | None = None
        self._usage: Any = None
        self._saw_tools = False
        self.done = False

    def feed_sse(self, event: str, data: str) -> list[Delta]:
        if data == "[DONE]":
            self.done = True
            return []
        if not data:
            return []
        chunk = loads(data)
        if event == "error" or chunk.get("error") is not None:
            raise stream_error(chunk)
        deltas: list[Delta] = []
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("reasoning_content") or delta.get("reasoning")
                if text:
                    deltas.append(ReasoningDelta(text))
                text = delta.get("content")
                if text:
                    deltas.append(TextDelta(text, logprobs_of(choice)))
                text = delta.get("refusal")
                if text:
                    deltas.append(RefusalDelta(text))
                calls = delta.get("tool_calls")
                if calls:
                    self._saw_tools = True
                    for position, call in enumerate(calls):
                        fn = call.get("function") or _NO_FUNCTION
                        deltas.append(ToolCallDelta(call.get("index", position), call.get("id"), fn.get("name"),
                                                    fn.get("arguments") or ""))
            reason = choice.get("finish_reason")
            if reason:
                self._finish = reason
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        return deltas

    def end(self) -> list[Delta]:
        if not self.done and self._finish is None:
            raise interrupted()
        deltas: list[Delta] = [usage_delta(self._usage)] if self._usage else []
        return [*deltas, Finish(finish_reason(self._finish, self._saw_tools))]
