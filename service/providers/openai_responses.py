"""A provider for a native Responses API upstream (``POST {base_url}/responses``): OpenAI, or any server
implementing Open Responses.

The translation lives in :mod:`switchboard.service.providers.openai_responses_translate`; the HTTP side (pooled client,
timeouts, cancellation, error mapping) in :mod:`switchboard.service.providers.http`.
"""

from __future__ import annotations

from typing import Any

from switchboard.service.providers.base import Delta, Turn
from switchboard.service.providers.chat_translate import status_error
from switchboard.service.providers.http import JSON, HttpProvider
from switchboard.service.providers.openai_responses_translate import EventStream, build_body, parse_response


class OpenAIResponsesProvider(HttpProvider):
    """Streams over SSE or takes one JSON body; either way the same deltas come out."""

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
    ) -> None:
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(name, url=base_url.rstrip("/") + "/responses", headers={**auth, **(headers or {})},
                         connect_timeout=connect_timeout, default_timeout=default_timeout, timeouts=timeouts,
                         model_timeouts=model_timeouts, max_connections=max_connections)

    def body(self, turn: Turn) -> JSON:
        return build_body(turn)

    def parse_body(self, data: JSON) -> list[Delta]:
        return parse_response(data)

    def folder(self) -> EventStream:
        return EventStream()

    def status_error(self, status: int, body: bytes, headers: Any) -> Exception:
        return status_error(status, body, headers)
