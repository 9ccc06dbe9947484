"""The provider contract: one request in, a stream of small deltas out.

Providers translate a :class:`Turn` to an upstream API and yield deltas. They never build Responses
items or events: the turn engine does that, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import astuple, dataclass, field
from typing import Literal, Protocol

from switchboard.responses.v1 import items_pb2, response_pb2, tools_pb2

# "unknown": the upstream gave a finish reason nobody documents; the response fails (code upstream_finish_reason).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "unknown"]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] = ()
    # The most likely alternatives: (token, logprob, bytes).
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningSummaryDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningOpaqueDelta:
    """The upstream's opaque proof of a reasoning block (an Anthropic thinking signature, a Responses
    `encrypted_content`). It ends that reasoning item; it travels sealed inside our `encrypted_content`."""

    data: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call. ``index`` groups the fragments of one call."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class UsageDelta:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: UsageDelta) -> UsageDelta:
        """The usage of two upstream calls together (the rounds of one response)."""
        return UsageDelta(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


Delta = (TextDelta | RefusalDelta | ReasoningDelta | ReasoningSummaryDelta | ReasoningOpaqueDelta | ToolCallDelta
         | UsageDelta | Finish)


@dataclass(slots=True)
class Turn:
    """One model call: the whole conversation, already resolved, plus sampling parameters.

    ``items`` holds messages, function calls, function call outputs and reasoning items in order;
    instructions are the first item, a system message.
    """

    model: str
    items: list[items_pb2.Item]
    stream: bool = True
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_logprobs: int | None = None
    # Plain functions only: namespaces are flattened and `allowed_tools` is already applied (the functions are
    # filtered and tool_choice is a mode or a named function), so providers never see either.
    tools: list[tools_pb2.FunctionTool] = field(default_factory=list)
    tool_choice: tools_pb2.ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: response_pb2.TextConfig | None = None
    reasoning: response_pb2.ReasoningConfig | None = None
    user: str | None = None
    # Seconds left before the caller's deadline; None means no deadline.
    timeout: float | None = None


class Provider(Protocol):
    """An upstream. ``stream`` must stop the upstream request when the consumer stops iterating."""

    name: str

    def stream(self, turn: Turn) -> AsyncGenerator[Delta, None]: ...

    async def aclose(self) -> None: ...


def message_text(item: items_pb2.Message) -> str:
    """All text of a message, whether its content is a string or a list of parts."""
    content = item.content
    if content.WhichOneof("value") == "text":
        return content.text
    texts: list[str] = []
    for part in content.parts.parts:
        kind = part.WhichOneof("part")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(getattr(part, kind).text)
        elif kind == "refusal":
            texts.append(part.refusal.refusal)
    return "".join(texts)


def role_name(role: int) -> str:
    return items_pb2.MessageRole.Name(role).removeprefix("MESSAGE_ROLE_").lower()  # type: ignore[arg-type]
