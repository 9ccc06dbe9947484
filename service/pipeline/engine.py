"""The turn engine: the one place that turns provider deltas into Responses items and stream events.

It assigns item ids, ``output_index``, ``content_index`` and ``sequence_number``, enforces the event order
(created -> in_progress -> per item: added, parts, deltas, done -> exactly one terminal event) and keeps the
``Response`` snapshot. Unary calls run the same engine and keep only the final snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from switchboard.responses.v1 import content_pb2, events_pb2, items_pb2, response_pb2
from switchboard.service.mcp.tools import McpRoute
from switchboard.service.pipeline.engine_mcp import McpItems, new_id
from switchboard.service.providers.base import (
    Delta,
    Finish,
    ReasoningDelta,
    ReasoningOpaqueDelta,
    ReasoningSummaryDelta,
    RefusalDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    UsageDelta,
)
from switchboard.shared.errors import ApiError, UpstreamError, response_error_code

Event = events_pb2.StreamEvent
__all__ = ["COMPLETED", "INCOMPLETE", "IN_PROGRESS", "EngineOptions", "Event", "TurnEngine", "logprob_pb", "new_id"]
IN_PROGRESS = items_pb2.ITEM_STATUS_IN_PROGRESS
COMPLETED = items_pb2.ITEM_STATUS_COMPLETED
INCOMPLETE = items_pb2.ITEM_STATUS_INCOMPLETE


@dataclass(frozen=True)
class EngineOptions:
    """What the request allows the engine to emit."""

    # Function names a call may use (upstream names); None allows any. A call outside them is dropped.
    allowed_tools: frozenset[str] | None = None
    # Upstream function name -> (namespace, name) for namespaced tools.
    tool_names: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    max_tool_calls: int | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    # Encrypts a reasoning item's text and upstream proof into `encrypted_content`.
    seal_reasoning: Callable[[bytes], str] | None = None
    # The client asked for include=reasoning.encrypted_content.
    include_encrypted: bool = False
    # USD per million input and output tokens.
    prices: tuple[float, float] | None = None
    # Upstream function name -> the MCP tool it stands for (calls become `mcp_call` or `mcp_approval_request`).
    mcp: Mapping[str, McpRoute] = field(default_factory=dict)


def logprob_pb(entry: TokenLogprob) -> content_pb2.LogProb:
    return content_pb2.LogProb(
        token=entry.token, logprob=entry.logprob, bytes=entry.bytes,
        top_logprobs=[content_pb2.TopLogProb(token=t, logprob=lp, bytes=b) for t, lp, b in entry.top],
    )


@dataclass
class _Open:
    """An output item being streamed, and its open content part (if any)."""

    index: int
    kind: str  # "message" | "reasoning" | "function_call" | "mcp_call" | "mcp_approval_request"
    part_kind: str | None = None  # "output_text" | "refusal" | "reasoning_text" | "summary_text"
    part_index: int = -1
    text: list[str] = field(default_factory=list)
    logprobs: list[content_pb2.LogProb] = field(default_factory=list)
    opaque: str | None = None
    item_id: str = ""  # the item's id, once looked up


class TurnEngine(McpItems):
    def __init__(self, response: response_pb2.Response, options: EngineOptions | None = None,
                 first_sequence: int = 0) -> None:
        self.response = response
        self.options = options or EngineOptions()
        self._seq = first_sequence
        self._current: _Open | None = None
        self._calls: dict[int, _Open] = {}
        self._dropped_calls: set[int] = set()
        self._call_count = 0
        self._round_calls = 0
        self._usage = UsageDelta()
        # Usage of the earlier upstream calls of this response (MCP tool rounds).
        self._banked = UsageDelta()
        self._finish: str | None = None
        # Why the response must end incomplete although the upstream finished (a tool limit was hit).
        self._limit: str | None = None
        self.limit: str | None = None
        # `mcp_call` items whose arguments are complete and that wait for their result, by output index.
        self.pending_mcp: list[int] = []
        self.terminal = False
        # The failure that ended the response, with its detailed code (`response.error.code` is OpenAI's class).
        self.failure: ApiError | None = None

    # ------------------------------------------------------------ events

    def _event(self, **arm: object) -> Event:
        event = Event(sequence_number=self._seq, **arm)  # type: ignore[arg-type]
        self._seq += 1
        return event

    def _snapshot_event(self, arm: str) -> Event:
        snapshot = response_pb2.Response()
        snapshot.CopyFrom(self.response)
        return self._event(**{arm: events_pb2.ResponseEvent(response=snapshot)})

    def _item(self, index: int) -> items_pb2.Item:
        return self.response.output[index]

    def _item_id(self, index: int) -> str:
        item = self._item(index)
        return str(getattr(item, str(item.WhichOneof("item"))).id)

    def start(self) -> list[Event]:
        self.response.status = response_pb2.RESPONSE_STATUS_IN_PROGRESS
        return [self._snapshot_event("response_created"), self._snapshot_event("response_in_progress")]

    def queue(self) -> list[Event]:
        """A background response: created, then queued; a worker's engine continues with ``resume``."""
        self.response.status = response_pb2.RESPONSE_STATUS_QUEUED
        return [self._snapshot_event("response_created"), self._snapshot_event("response_queued")]

    def resume(self) -> list[Event]:
        self.response.status = response_pb2.RESPONSE_STATUS_IN_PROGRESS
        return [self._snapshot_event("response_in_progress")]

    @property
    def next_sequence(self) -> int:
        return self._seq

    # ------------------------------------------------------------ deltas

    def feed(self, delta: Delta) -> list[Event]:
        if isinstance(delta, TextDelta):
            return self._content("message", "output_text", delta.text, delta.logprobs)
        if isinstance(delta, RefusalDelta):
            return self._content("message", "refusal", delta.text)
        if isinstance(delta, ReasoningDelta):
            return self._content("reasoning", "reasoning_text", delta.text)
        if isinstance(delta, ReasoningSummaryDelta):
            return self._content("reasoning", "summary_text", delta.text)
        if isinstance(delta, ReasoningOpaqueDelta):
            current = self._current
            if current is None or current.kind != "reasoning":
                events = self._close_current(COMPLETED) + self._open_item("reasoning")
                current = self._current
                assert current is not None
            else:
                events = []
            current.opaque = delta.data
            return events + self._close_current(COMPLETED)
        if isinstance(delta, ToolCallDelta):
            return self._tool_call(delta)
        if isinstance(delta, UsageDelta):
            u = self._usage
            self._usage = UsageDelta(
                input_tokens=max(u.input_tokens, delta.input_tokens),
                output_tokens=max(u.output_tokens, delta.output_tokens),
                cached_tokens=max(u.cached_tokens, delta.cached_tokens),
                cache_write_tokens=max(u.cache_write_tokens, delta.cache_write_tokens),
                reasoning_tokens=max(u.reasoning_tokens, delta.reasoning_tokens),
            )
            return []
        if isinstance(delta, Finish):
            self._finish = delta.reason
            return []
        raise TypeError(f"unknown delta {delta!r}")

    def _open_item(self, kind: str) -> list[Event]:
        index = len(self.response.output)
        item = self.response.output.add()
        if kind == "message":
            item.message.id = new_id("msg")
            item.message.status = IN_PROGRESS
            item.message.role = items_pb2.MESSAGE_ROLE_ASSISTANT
            item.message.content.parts.SetInParent()
        else:
            item.reasoning.id = new_id("rs")
            item.reasoning.status = IN_PROGRESS
        self._current = _Open(index=index, kind=kind)
        return [self._added(index)]

    def _added(self, index: int) -> Event:
        copy = items_pb2.Item()
        copy.CopyFrom(self._item(index))
        return self._event(output_item_added=events_pb2.OutputItemEvent(output_index=index, item=copy))

    def _content(self, kind: str, part_kind: str, text: str,
                 logprobs: tuple[TokenLogprob, ...] = ()) -> list[Event]:
        if not text:
            return []
        events: list[Event] = []
        current = self._current
        if current is None or current.kind != kind:
            events += self._close_current(COMPLETED)
            events += self._open_item(kind)
            current = self._current
            assert current is not None
        if current.part_kind != part_kind:
            events += self._close_part(current)
            events += self._open_part(current, part_kind)
        current.text.append(text)
        item_id = current.item_id
        if not item_id:
            item_id = current.item_id = self._item_id(current.index)
        index, part = current.index, current.part_index
        if part_kind == "output_text":
            # The hot path (one event per upstream token): the delta is written in place, not built and copied.
            event = Event(sequence_number=self._seq)
            self._seq += 1
            delta = event.output_text_delta
            delta.item_id, delta.output_index, delta.content_index, delta.delta = item_id, index, part, text
            if logprobs and self.options.logprobs:
                delta.logprobs.extend(logprob_pb(e) for e in logprobs)
                current.logprobs.extend(delta.logprobs)
            events.append(event)
        elif part_kind == "summary_text":
            summary = events_pb2.SummaryTextDeltaEvent(
                item_id=item_id, output_index=index, summary_index=part, delta=text
            )
            events.append(self._event(reasoning_summary_text_delta=summary))
        else:
            plain = events_pb2.ContentDeltaEvent(item_id=item_id, output_index=index, content_index=part, delta=text)
            arm = "refusal_delta" if part_kind == "refusal" else "reasoning_delta"
            events.append(self._event(**{arm: plain}))
        return events

    @staticmethod
    def _part(part_kind: str, text: str) -> content_pb2.ContentPart:
        part = content_pb2.ContentPart()
        if part_kind == "refusal":
            part.refusal.refusal = text
        else:
            sub = getattr(part, part_kind)
            sub.text = text
        return part

    def _open_part(self, current: _Open, part_kind: str) -> list[Event]:
        item = self._item(current.index)
        if part_kind == "summary_text":
            container = item.reasoning.summary
        elif current.kind == "reasoning":
            container = item.reasoning.content
        else:
            container = item.message.content.parts.parts
        current.part_kind, current.part_index, current.text = part_kind, len(container), []
        container.add().CopyFrom(self._part(part_kind, ""))
        item_id = self._item_id(current.index)
        part = self._part(part_kind, "")
        if part_kind == "summary_text":
            summary = events_pb2.SummaryPartEvent(
                item_id=item_id, output_index=current.index, summary_index=current.part_index, part=part
            )
            return [self._event(reasoning_summary_part_added=summary)]
        added = events_pb2.ContentPartEvent(
            item_id=item_id, output_index=current.index, content_index=current.part_index, part=part
        )
        return [self._event(content_part_added=added)]

    def _close_part(self, current: _Open) -> list[Event]:
        kind = current.part_kind
        if kind is None:
            return []
        text = "".join(current.text)
        item = self._item(current.index)
        part = self._part(kind, text)
        if kind == "output_text":
            part.output_text.logprobs.extend(current.logprobs)
        if kind == "summary_text":
            item.reasoning.summary[current.part_index].CopyFrom(part)
        elif current.kind == "reasoning":
            item.reasoning.content[current.part_index].CopyFrom(part)
        else:
            item.message.content.parts.parts[current.part_index].CopyFrom(part)
        item_id, index, at = self._item_id(current.index), current.index, current.part_index
        current.part_kind = None
        if kind == "summary_text":
            return [
                self._event(reasoning_summary_text_done=events_pb2.SummaryTextDoneEvent(
                    item_id=item_id, output_index=index, summary_index=at, text=text)),
                self._event(reasoning_summary_part_done=events_pb2.SummaryPartEvent(
                    item_id=item_id, output_index=index, summary_index=at, part=part)),
            ]
        if kind == "output_text":
            done = self._event(output_text_done=events_pb2.OutputTextDoneEvent(
                item_id=item_id, output_index=index, content_index=at, text=text, logprobs=current.logprobs))
        elif kind == "refusal":
            done = self._event(refusal_done=events_pb2.RefusalDoneEvent(
                item_id=item_id, output_index=index, content_index=at, refusal=text))
        else:
            done = self._event(reasoning_done=events_pb2.ReasoningDoneEvent(
                item_id=item_id, output_index=index, content_index=at, text=text))
        part_done = self._event(content_part_done=events_pb2.ContentPartEvent(
            item_id=item_id, output_index=index, content_index=at, part=part))
        return [done, part_done]

    def _close_item(self, opened: _Open, status: int) -> list[Event]:
        events = self._close_part(opened)
        item = self._item(opened.index)
        kind = item.WhichOneof("item")
        sub = getattr(item, str(kind))
        if kind in ("mcp_call", "mcp_approval_request"):
            return events + self._close_mcp(opened.index, opened.text, completed=status == COMPLETED)
        sub.status = status
        # Sealed when the client asked for it, and always when the upstream's proof must survive the next turn.
        if kind == "reasoning" and self.options.seal_reasoning is not None and (
                opened.opaque is not None or self.options.include_encrypted):
            sub.encrypted_content = self.options.seal_reasoning(orjson.dumps({
                "content": [p.reasoning_text.text for p in sub.content if p.HasField("reasoning_text")],
                "summary": [p.summary_text.text for p in sub.summary if p.HasField("summary_text")],
                "upstream": opened.opaque,
            }))
        if kind == "function_call":
            if not opened.text:
                # A call without arguments still gets "{}", and its deltas must add up to it.
                opened.text.append("{}")
                events.append(self._event(function_call_arguments_delta=events_pb2.FunctionCallArgumentsDeltaEvent(
                    item_id=sub.id, output_index=opened.index, delta="{}")))
            arguments = "".join(opened.text)
            sub.arguments = arguments
            events.append(self._event(function_call_arguments_done=events_pb2.FunctionCallArgumentsDoneEvent(
                item_id=sub.id, output_index=opened.index, arguments=arguments)))
        copy = items_pb2.Item()
        copy.CopyFrom(item)
        events.append(self._event(output_item_done=events_pb2.OutputItemEvent(output_index=opened.index, item=copy)))
        return events

    # ------------------------------------------------------------ MCP tool rounds (items: pipeline.engine_mcp)

    def end_round(self) -> list[Event]:
        """The upstream call ended with MCP calls to run: closes its items; the next call starts a new round."""
        events = self._close_all(COMPLETED)
        self._banked = self._banked + self._usage
        self._usage = UsageDelta()
        self._round_calls = 0
        self._dropped_calls = set()
        return events

    def has_open_mcp_calls(self) -> bool:
        return any(o.kind == "mcp_call" for o in self._calls.values()) or bool(self.pending_mcp)

    @property
    def stopped(self) -> bool:
        return self._limit is not None

    def stop(self, limit: str) -> None:
        """The response ends incomplete because of a tool-loop limit (`max_tool_calls`, `mcp_time_budget`), whatever
        the upstream says. OpenAI's incomplete reasons are a closed set that strict clients check, so the wire says
        `max_messages` (the loop ran out of turns); the limit itself is kept in `limit` for logs and spans."""
        if self.limit is None:
            self.limit = limit
            self._limit = "max_messages"

    def _close_current(self, status: int) -> list[Event]:
        current, self._current = self._current, None
        return self._close_item(current, status) if current is not None else []

    def _accepts_call(self, name: str) -> bool:
        """The request's tool rules are hard constraints: a call that breaks them is never returned."""
        options = self.options
        if options.allowed_tools is not None and name not in options.allowed_tools:
            return False
        if options.max_tool_calls is not None and self._call_count >= options.max_tool_calls:
            return False
        return options.parallel_tool_calls or self._round_calls == 0

    def _tool_call(self, delta: ToolCallDelta) -> list[Event]:
        if delta.index in self._dropped_calls:
            return []
        events: list[Event] = []
        opened = self._calls.get(delta.index)
        route = self.options.mcp.get(delta.name or "") if opened is None else None
        if opened is None:
            if not self._accepts_call(delta.name or ""):
                if route is not None and self.options.max_tool_calls is not None \
                        and self._call_count >= self.options.max_tool_calls:
                    self.stop("max_tool_calls")
                self._dropped_calls.add(delta.index)
                return []
            self._call_count += 1
            self._round_calls += 1
            events += self._close_current(COMPLETED)
        if route is not None:
            index, opened_events = self._open_mcp(route)
            opened = self._calls[delta.index] = _Open(index=index, kind=str(self._item(index).WhichOneof("item")))
            events += opened_events
        elif opened is not None and opened.kind != "function_call":
            pass
        elif opened is None:
            index = len(self.response.output)
            item = self.response.output.add()
            call = item.function_call
            call.id = new_id("fc")
            call.call_id = delta.call_id or new_id("call")
            call.name = delta.name or ""
            if call.name in self.options.tool_names:
                call.namespace, call.name = self.options.tool_names[call.name]
            call.status = IN_PROGRESS
            opened = self._calls[delta.index] = _Open(index=index, kind="function_call")
            events.append(self._added(index))
        elif delta.name and not self._item(opened.index).function_call.name:
            self._item(opened.index).function_call.name = delta.name
        if delta.arguments and opened.kind == "mcp_call":
            opened.text.append(delta.arguments)
            events.append(self._event(mcp_call_arguments_delta=events_pb2.McpCallArgumentsDeltaEvent(
                item_id=self._item_id(opened.index), output_index=opened.index, delta=delta.arguments)))
        elif delta.arguments and opened.kind == "mcp_approval_request":
            opened.text.append(delta.arguments)
        elif delta.arguments:
            opened.text.append(delta.arguments)
            call = self._item(opened.index).function_call
            events.append(self._event(function_call_arguments_delta=events_pb2.FunctionCallArgumentsDeltaEvent(
                item_id=call.id, output_index=opened.index, delta=delta.arguments)))
        return events

    # ------------------------------------------------------------ endings

    def _close_all(self, last_status: int) -> list[Event]:
        opened = sorted([*self._calls.values(), *([self._current] if self._current else [])], key=lambda o: o.index)
        self._current, self._calls = None, {}
        events: list[Event] = []
        for position, item in enumerate(opened):
            status = last_status if position == len(opened) - 1 else COMPLETED
            events += self._close_item(item, status)
        return events

    def _set_usage(self) -> None:
        u = self._banked + self._usage
        self.response.usage.CopyFrom(response_pb2.Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            total_tokens=u.input_tokens + u.output_tokens,
            input_tokens_details=response_pb2.InputTokensDetails(cached_tokens=u.cached_tokens,
                                                                 cache_write_tokens=u.cache_write_tokens),
            output_tokens_details=response_pb2.OutputTokensDetails(reasoning_tokens=u.reasoning_tokens),
        ))
        if self.options.prices is not None:
            prompt, completion = self.options.prices
            self.response.usage.cost = (u.input_tokens * prompt + u.output_tokens * completion) / 1_000_000

    def _output_text(self) -> str:
        texts = []
        for item in self.response.output:
            if item.WhichOneof("item") == "message":
                texts += [p.output_text.text for p in item.message.content.parts.parts if p.HasField("output_text")]
        return "".join(texts)

    def _invalid_arguments(self) -> str | None:
        """The name of a function call whose arguments are not JSON (a broken upstream), if any."""
        for opened in self._calls.values():
            arguments = "".join(opened.text)
            try:
                orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError:
                item = self._item(opened.index)
                return str(getattr(item, str(item.WhichOneof("item"))).name) or "?"
        return None

    def finish(self) -> list[Event]:
        """Closes open items and emits the terminal event, from the provider's finish reason."""
        reason = self._finish
        if reason in (None, "stop", "tool_calls"):
            broken = self._invalid_arguments()
            if broken is not None:
                return self.fail(UpstreamError(f"The upstream returned arguments for {broken!r} that are not JSON.",
                                               code="upstream_invalid_tool_arguments", retryable=False))
        if reason == "unknown" and not self._limit:
            # OpenAI's incomplete reasons are a closed set, and an undocumented reason (OpenRouter's "error") means
            # the upstream did not finish properly: a failure, not a completed or incomplete answer.
            return self.fail(UpstreamError("The upstream ended the answer with an undocumented finish reason.",
                                           code="upstream_finish_reason", retryable=False))
        incomplete = self._limit or {"length": "max_output_tokens",
                                     "content_filter": "content_filter"}.get(reason or "")
        events = self._close_all(INCOMPLETE if incomplete else COMPLETED)
        events += self._abandon_pending()
        self._set_usage()
        self.response.output_text = self._output_text()
        self.response.completed_at = int(time.time())
        self.terminal = True
        if incomplete:
            self.response.status = response_pb2.RESPONSE_STATUS_INCOMPLETE
            self.response.incomplete_details.reason = incomplete
            return events + [self._snapshot_event("response_incomplete")]
        self.response.status = response_pb2.RESPONSE_STATUS_COMPLETED
        return events + [self._snapshot_event("response_completed")]

    def cancel(self) -> list[Event]:
        """The client cancelled: open items end as incomplete and the stream ends with ``response.failed``
        carrying status ``cancelled`` (the spec has no dedicated terminal event for it)."""
        events = self._close_all(INCOMPLETE) + self._abandon_pending()
        self._set_usage()
        self.response.output_text = self._output_text()
        self.response.status = response_pb2.RESPONSE_STATUS_CANCELLED
        # As OpenAI: a cancelled response has no error; its status says what happened.
        self.response.ClearField("error")
        self.terminal = True
        return events + [self._snapshot_event("response_failed")]

    def fail(self, error: ApiError) -> list[Event]:
        """An ``error`` event, then ``response.failed``. Open items end as incomplete."""
        events = self._close_all(INCOMPLETE) + self._abandon_pending()
        payload = events_pb2.ErrorPayload(type=error.error_type, code=error.code, message=error.message)
        if error.param is not None:
            payload.param = error.param
        events.append(self._event(error=events_pb2.ErrorEvent(error=payload, message=error.message, code=error.code,
                                                              param=error.param)))
        self._set_usage()
        self.response.output_text = self._output_text()
        self.response.status = response_pb2.RESPONSE_STATUS_FAILED
        self.failure = error
        self.response.error.CopyFrom(response_pb2.ResponseError(code=response_error_code(error.status, error.code),
                                                                message=error.message))
        self.terminal = True
        return events + [self._snapshot_event("response_failed")]
