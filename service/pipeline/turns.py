"""Serving one turn: check and resolve the request, try the upstream attempts in order until one starts
(model fallbacks and provider routing), then run the turn engine to the end, with a span per attempt and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from switchboard.responses.v1 import items_pb2, response_pb2, responses_service_pb2, tools_pb2
from switchboard.responses.v1.items_pb2 import Item
from switchboard.service.mcp import tools as mcp_tools
from switchboard.service.mcp.calls import Outcome, execute
from switchboard.service.mcp.client import McpServer
from switchboard.service.pipeline import tracing
from switchboard.service.pipeline.engine import Event, TurnEngine
from switchboard.service.pipeline.plugins import (
    check_plugins,
    compress,
    enabled_plugins,
    estimate_tokens,
    heal_response,
    parse_files,
    truncate_oldest,
)
from switchboard.service.pipeline.requests import Prepared, for_upstream, prepare
from switchboard.service.pipeline.validation import validate
from switchboard.service.providers.base import Delta, Finish, Provider, Turn
from switchboard.service.routing.router import Attempt, Router
from switchboard.service.store import Store
from switchboard.shared.config.settings import Config
from switchboard.shared.crypto import Sealer
from switchboard.shared.errors import ApiError, internal, invalid
from switchboard.shared.metrics import Metrics

Request = responses_service_pb2.CreateResponseRequest
tracer = trace.get_tracer("switchboard.service")
log = logging.getLogger(__name__)


def previous_not_found(response_id: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, "previous_response_not_found",
                    f"Previous response with id {response_id!r} not found.", param="previous_response_id")


# Output tokens kept free when trimming a context with no max_output_tokens.
_DEFAULT_OUTPUT_RESERVE = 1024
# The upstream call ends this long (at most a quarter of the time left) before the caller's deadline, so that the
# caller gets our error naming the limit that fired rather than a bare DEADLINE_EXCEEDED of its own.
_DEADLINE_MARGIN = 0.25
_TIERS = {"auto": response_pb2.SERVICE_TIER_AUTO, "default": response_pb2.SERVICE_TIER_DEFAULT,
          "flex": response_pb2.SERVICE_TIER_FLEX, "priority": response_pb2.SERVICE_TIER_PRIORITY,
          "scale": response_pb2.SERVICE_TIER_SCALE}
# Request fields -> the parameter names endpoints declare in `supported_parameters` (OpenRouter's names).
_PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_output_tokens": "max_tokens",
               "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
               "tool_choice": "tool_choice", "parallel_tool_calls": "parallel_tool_calls",
               "top_logprobs": "top_logprobs", "reasoning": "reasoning"}


def _tools_off(request: Request) -> bool:
    choice = request.tool_choice
    return request.HasField("tool_choice") and choice.WhichOneof("choice") == "mode" \
        and choice.mode == tools_pb2.TOOL_CHOICE_MODE_NONE


def needed_parameters(request: Request) -> set[str]:
    needed = {name for field, name in _PARAMETERS.items() if request.HasField(field)}  # type: ignore[arg-type]
    if request.tools:
        needed.add("tools")
    if request.text.format.WhichOneof("format") in ("json_object", "json_schema"):
        needed.add("response_format")
    return needed


@dataclass
class McpTurn:
    """The request's MCP servers: their listings, the approved calls already run (with their results) and the
    deadline of the response's MCP time budget."""

    servers: dict[str, McpServer]
    listings: list[mcp_tools.Listing]
    approved: list[tuple[items_pb2.McpApprovalRequest, Outcome]]
    deadline: float


@dataclass
class Started:
    """A turn whose upstream has produced its first delta (or finished without any)."""

    request: Request
    owner: str
    prepared: Prepared
    engine: TurnEngine
    attempt: Attempt
    deltas: AsyncGenerator[Delta, None]
    first: Delta | None
    span: Span
    started_at: float
    first_at: float
    stream: bool
    resumed: bool = False
    # When the last upstream delta arrived (throughput is measured over streamed upstream calls).
    last_at: float = 0.0
    # The upstream call as the answering attempt made it (the next MCP tool round extends it).
    turn: Turn | None = None
    mcp: McpTurn | None = None
    # Awaited with the final response once the terminal event has been taken (a completed turn only).
    on_finish: Callable[[response_pb2.Response], Awaitable[None]] | None = None


class TurnRunner:
    def __init__(self, config: Config, providers: dict[str, Provider], metrics: Metrics,
                 store: Store | None = None) -> None:
        self._config = config
        self._providers = providers
        self._metrics = metrics
        self._store = store
        self._sealer = Sealer(config.encryption_key)
        self.router = Router(config.routing, set(providers))

    @property
    def store(self) -> Store | None:
        return self._store

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def config(self) -> Config:
        return self._config

    async def history(self, owner: str, previous_response_id: str) -> list[Item]:
        """The earlier turns of a chain, oldest first: each turn's input items, then its output."""
        if self._store is None:
            raise previous_not_found(previous_response_id)
        chain = await self._store.chain(owner, previous_response_id)
        if not chain:
            raise previous_not_found(previous_response_id)
        items: list[Item] = []
        for stored in chain:
            items.extend(stored.input_items)
            items.extend(stored.response.output)
        return items

    def prepare(self, request: Request, *, stream: bool, timeout: float | None,
                history: list[Item] | None) -> Prepared:
        # Background jobs always run streamed; what the client asked for is the request's own `stream`.
        client_streams = bool(request.stream) if request.background else stream
        validate(request, stream=client_streams)
        mcp_tools.check(request, self._config.mcp)
        check_plugins(request, stream=client_streams, web_search_configured=False)
        return prepare(request, self._config, stream=stream, timeout=timeout, sealer=self._sealer,
                       history=history, store_default=self._config.store_default and self._store is not None)

    @property
    def sealer(self) -> Sealer:
        return self._sealer

    def resolve(self, name: str, param: str = "model") -> None:
        """Raises 404 unless ``name`` is a routed model or `<provider>/<model>` with a configured provider."""
        self.router.endpoints(name, param)

    def plan(self, request: Request, prepared: Prepared, metadata: Sequence[tuple[str, Any]] | None, *,
             trimming: bool = False) -> list[Attempt]:
        """The upstream attempts: `model`, then each of `models`, each over its endpoints in routing order.
        When the context may be trimmed per endpoint, no endpoint is ruled out for its context length."""
        session_key = tracing.session_id(request, metadata) or (
            request.prompt_cache_key if request.HasField("prompt_cache_key") else None)
        estimate = estimate_tokens(prepared.turn.items)
        if not trimming:
            windows = [e.context_length for name in [prepared.model, *request.models]
                       for e in self.router.endpoints(name) if e.context_length]
            if windows and estimate > max(windows):
                # truncation: disabled (the default) never drops context: too long is the client's error.
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded",
                               f"The input is about {estimate} tokens; the largest context window of the requested "
                               f"models is {max(windows)} tokens. Shorten it, or set truncation to 'auto'.",
                               param="input")
        return self.router.plan(
            [prepared.model, *request.models], request.provider if request.HasField("provider") else None,
            session_key=session_key or None, needed_parameters=needed_parameters(request),
            estimated_input_tokens=0 if trimming else estimate)

    async def start(self, request: Request, *, owner: str, stream: bool, timeout: float | None,
                    metadata: Sequence[tuple[str, Any]] | None = None, history: list[Item] | None = None,
                    resumed: response_pb2.Response | None = None) -> Started:
        """Resolves the request and starts the first upstream attempt that works. ``history`` overrides the
        stored chain (WebSocket sessions); ``resumed`` is a queued background response a worker now runs."""
        started_at = time.monotonic()
        if resumed is not None:
            request = mcp_tools.open_secrets(request, self._sealer)
        tracing.annotate(request, metadata)
        if history is None and request.HasField("previous_response_id") and request.previous_response_id:
            history = await self.history(owner, request.previous_response_id)
        prepared = self.prepare(request, stream=stream, timeout=timeout, history=history)
        if resumed is not None:
            prepared.response.id, prepared.response.created_at = resumed.id, resumed.created_at
            prepared.response.background = True
        plugins = enabled_plugins(request)
        if "file-parser" in plugins:
            prepared.turn.items = await asyncio.to_thread(parse_files, prepared.turn.items)
        trimming = "context-compression" in plugins or request.truncation == response_pb2.TRUNCATION_AUTO
        attempts = self.plan(request, prepared, metadata, trimming=trimming)
        base_options = prepared.options
        mcp: McpTurn | None = None
        if mcp_tools.mcp_tools(request):
            mcp, routes = await self._mcp_start(request, prepared, history or [], started_at)
            if base_options.allowed_tools is not None and not _tools_off(request):
                allowed = base_options.allowed_tools | frozenset(routes)
                base_options = dataclasses.replace(base_options, allowed_tools=allowed)
            base_options = dataclasses.replace(base_options, mcp=routes)
        if not prepared.turn.items:
            # Only items that read as nothing to a model (an MCP listing, an approval request).
            raise invalid("The input holds nothing the model can read: add a message.", "input",
                          code="missing_input")

        tried: list[Attempt] = []
        turns: dict[int, Turn] = {}

        async def attempt_call(attempt: Attempt) -> tuple[AsyncGenerator[Delta, None], Delta | None, Span]:
            tried.append(attempt)
            endpoint = attempt.endpoint
            attempt_started = time.monotonic()
            turn = dataclasses.replace(prepared.turn, model=endpoint.model)
            if trimming and endpoint.context_length:
                trim = compress if "context-compression" in plugins else truncate_oldest
                turn.items = trim(turn.items, context_length=endpoint.context_length,
                                  reserve_output=turn.max_output_tokens or _DEFAULT_OUTPUT_RESERVE)
            if timeout is not None:
                left = timeout - (time.monotonic() - started_at)
                turn.timeout = max(0.0, left - min(_DEADLINE_MARGIN, left / 4))
            span = self._attempt_span(attempt, prepared, request)
            turns[id(attempt)] = turn
            deltas = self._providers[endpoint.provider].stream(turn)
            try:
                with trace.use_span(span, end_on_exit=False):
                    first = await anext(deltas, None)
            except BaseException as error:
                await deltas.aclose()
                self._attempt_failed(span, attempt, error)
                self._metrics.upstream_duration.record(time.monotonic() - attempt_started,
                                                       {"provider": endpoint.provider, "outcome": "error"})
                raise
            return deltas, first, span

        try:
            attempt, (deltas, first, span) = await self.router.run(attempts, attempt_call)
        except ApiError as error:
            provider = tried[-1].endpoint.provider if tried else ""
            self._metrics.requests.add(1, {"route": "responses", "status": error.status.name,
                                           "model": prepared.model, "provider": provider})
            raise
        response = prepared.response
        response.model = attempt.model_name
        response.service_tier = _TIERS.get(attempt.endpoint.tier, response_pb2.SERVICE_TIER_DEFAULT)
        options = base_options
        if attempt.endpoint.price_prompt or attempt.endpoint.price_completion:
            options = dataclasses.replace(options, prices=(attempt.endpoint.price_prompt,
                                                           attempt.endpoint.price_completion))
        # A resumed background response continues its stream after `response.created` and `.queued`.
        engine = TurnEngine(response, options, first_sequence=2 if resumed is not None else 0)
        return Started(request=request, owner=owner, prepared=prepared, engine=engine, attempt=attempt,
                       deltas=deltas, first=first, span=span, started_at=started_at,
                       first_at=time.monotonic(), stream=stream, resumed=resumed is not None,
                       turn=turns.get(id(attempt)), mcp=mcp)

    async def _mcp_start(self, request: Request, prepared: Prepared, history: list[Item],
                         started_at: float) -> tuple[McpTurn, dict[str, mcp_tools.McpRoute]]:
        """Lists the MCP servers' tools (or reuses the conversation's listing), offers them to the upstream as
        functions, and runs the calls the input approves, before the first upstream call."""
        config = self._config.mcp
        # Items the client sends back (store: false chains) count as the conversation too.
        conversation = [*history, *prepared.inputs]
        listings = await mcp_tools.list_all(request, config, conversation)
        functions, routes = mcp_tools.functions(request, listings)
        prepared.turn.tools.extend(functions)
        if prepared.turn.tool_choice is None and functions:
            prepared.turn.tool_choice = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_AUTO)
        servers = {tool.server_label: mcp_tools.server(tool) for _, tool in mcp_tools.mcp_tools(request)}
        mcp = McpTurn(servers=servers, listings=listings, approved=[], deadline=started_at + config.response_timeout)
        for asked, approve in mcp_tools.approvals(request, prepared.inputs, history):
            if not approve:
                continue  # the conversation tells the upstream the call was refused
            outcome = await execute(servers[asked.server_label], asked.name, asked.arguments, config, mcp.deadline)
            mcp.approved.append((asked, outcome))
            prepared.turn.items.extend(mcp_tools.call_pair(
                asked.id, asked.server_label, asked.name, asked.arguments, outcome.text()))
        return mcp, routes

    async def run(self, started: Started, cancel: asyncio.Event | None = None) -> AsyncIterator[Event]:
        """The events of the whole turn; ends with exactly one terminal event, whatever fails. The response is
        stored before its terminal event is sent, so a client that sees it can fetch it."""
        engine = started.engine
        if started.stream:
            self._metrics.active_streams.add(1)
        finish_reason: str | None = None
        status = "OK"
        terminal: list[Event]
        try:
            for event in engine.resume() if started.resumed else engine.start():
                yield event
            for event in self._mcp_prelude(started):
                yield event
            if started.first is not None:
                self._metrics.time_to_first_token.record(started.first_at - started.started_at,
                                                         self._labels(started))
            first = started.first
            while True:
                round_start = len(engine.response.output)
                if first is not None:
                    for event in engine.feed(first):
                        yield event
                    if isinstance(first, Finish):
                        finish_reason = first.reason
                    async for delta in started.deltas:
                        started.last_at = time.monotonic()
                        if cancel is not None and cancel.is_set():
                            break
                        if isinstance(delta, Finish):
                            finish_reason = delta.reason
                        for event in engine.feed(delta):
                            yield event
                if (cancel is not None and cancel.is_set()) or not self._mcp_round_due(started):
                    break
                # The model called MCP tools: run them, then ask the upstream again with their results.
                for event in engine.end_round():
                    yield event
                async for event in self._mcp_calls(started):
                    yield event
                if not self._mcp_continues(started, finish_reason, round_start):
                    break
                first = await self._next_round(started, round_start)
            terminal = engine.cancel() if cancel is not None and cancel.is_set() else engine.finish()
            if "response-healing" in enabled_plugins(started.request) and heal_response(engine.response):
                # The terminal event's snapshot was taken before healing.
                arm = str(terminal[-1].WhichOneof("event"))
                getattr(terminal[-1], arm).response.CopyFrom(engine.response)
        except ApiError as error:
            status = error.status.name
            self._attempt_failed(started.span, started.attempt, error, end=False)
            terminal = engine.fail(error)
        except Exception as error:
            log.exception("the turn failed")
            status = "INTERNAL"
            self._attempt_failed(started.span, started.attempt, error, end=False)
            terminal = engine.fail(internal())
        try:
            await self.save(started)
            for event in terminal:
                yield event
            if started.on_finish is not None:
                await started.on_finish(engine.response)
        finally:
            await started.deltas.aclose()
            if started.stream:
                self._metrics.active_streams.add(-1)
            self._finish(started, finish_reason, status)

    async def save(self, started: Started) -> None:
        response = started.engine.response
        if self._store is None or not response.store:
            return
        expires = time.time() + self._config.retention_seconds if self._config.retention_seconds else None
        await self._store.save_response(started.owner, response, mcp_tools.without_request_secrets(started.request),
                                        started.prepared.inputs, expires_at=expires)

    # ------------------------------------------------------------ MCP tool rounds

    def _mcp_prelude(self, started: Started) -> list[Event]:
        """The new listings and the calls the input approved (run before the first upstream call)."""
        mcp, engine = started.mcp, started.engine
        if mcp is None:
            return []
        events: list[Event] = []
        for listing in mcp.listings:
            if not listing.reused:
                events += engine.mcp_listing(listing.server_label, [mcp_tools.info(t) for t in listing.tools],
                                             listing.error)
        for asked, outcome in mcp.approved:
            events += engine.mcp_approved_call(asked)
            events += engine.mcp_call_result(engine.pending_mcp[-1], outcome.output, outcome.error)
            if outcome.out_of_time:
                engine.stop("mcp_time_budget")
        return events

    def _mcp_round_due(self, started: Started) -> bool:
        return started.mcp is not None and started.engine.has_open_mcp_calls()

    async def _mcp_calls(self, started: Started) -> AsyncIterator[Event]:
        """Runs the calls the model made in this round, one after another, each ending its `mcp_call` item."""
        mcp, engine = started.mcp, started.engine
        assert mcp is not None
        for index in list(engine.pending_mcp):
            call = engine.response.output[index].mcp_call
            outcome = await execute(mcp.servers[call.server_label], call.name, call.arguments, self._config.mcp,
                                    mcp.deadline)
            for event in engine.mcp_call_result(index, outcome.output, outcome.error):
                yield event
            if outcome.out_of_time:
                engine.stop("mcp_time_budget")

    def _mcp_continues(self, started: Started, finish_reason: str | None, round_start: int) -> bool:
        """Another upstream call follows unless the turn ends here: the client has calls to answer (its own
        functions, approvals), a limit was hit, or the upstream stopped for another reason."""
        engine, mcp = started.engine, started.mcp
        assert mcp is not None
        if finish_reason not in (None, "stop", "tool_calls") or engine.stopped or engine.client_action_due(round_start):
            return False
        if time.monotonic() >= mcp.deadline:
            engine.stop("mcp_time_budget")
            return False
        return True

    async def _next_round(self, started: Started, round_start: int) -> Delta | None:
        """Starts the next upstream call with this round's output and returns its first delta."""
        assert started.turn is not None
        output = list(started.engine.response.output)[round_start:]
        turn = dataclasses.replace(started.turn, items=[*started.turn.items, *for_upstream(output, self._sealer)])
        choice = turn.tool_choice
        if choice is not None and (choice.WhichOneof("choice") != "mode"
                                   or choice.mode == tools_pb2.TOOL_CHOICE_MODE_REQUIRED):
            # A forced tool call was made: the model may now answer.
            turn.tool_choice = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_AUTO)
        started.turn = turn
        await started.deltas.aclose()
        started.deltas = self._providers[started.attempt.endpoint.provider].stream(turn)
        with trace.use_span(started.span, end_on_exit=False):
            return await anext(started.deltas, None)

    # ------------------------------------------------------------ telemetry

    def _attempt_span(self, attempt: Attempt, prepared: Prepared, request: Request) -> Span:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": attempt.endpoint.provider,
            "gen_ai.request.model": attempt.endpoint.model,
            "switchboard.model": attempt.model_name,
        }
        turn = prepared.turn
        for key, value in (("gen_ai.request.max_tokens", turn.max_output_tokens),
                           ("gen_ai.request.temperature", turn.temperature), ("gen_ai.request.top_p", turn.top_p)):
            if value is not None:
                attributes[key] = value
        if self._config.record_content:
            attributes["gen_ai.input.messages"] = orjson.dumps(
                [tracing.item_summary(item) for item in turn.items]).decode()
        name, links = tracing.generation_span(request.trace if request.HasField("trace") else None,
                                                f"chat {attempt.endpoint.model}")
        return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes, links=links)

    def _attempt_failed(self, span: Span, attempt: Attempt, error: BaseException, *, end: bool = True) -> None:
        code = error.code if isinstance(error, ApiError) else type(error).__name__
        span.set_status(Status(StatusCode.ERROR, str(code)))
        span.set_attribute("error.type", str(code))
        self._metrics.upstream_errors.add(1, {"provider": attempt.endpoint.provider, "code": str(code)})
        if end:
            span.end()

    def _labels(self, started: Started) -> dict[str, str]:
        return {"model": started.attempt.model_name, "provider": started.attempt.endpoint.provider}

    def _finish(self, started: Started, finish_reason: str | None, status: str) -> None:
        response = started.engine.response
        labels = self._labels(started)
        elapsed = time.monotonic() - started.started_at
        self._metrics.requests.add(1, {"route": "responses", "status": status, **labels})
        self._metrics.duration.record(elapsed, labels)
        # The answering attempt: from the start of the turn to its last upstream delta.
        last = max(started.last_at, started.first_at)
        self._metrics.upstream_duration.record(last - started.started_at, {**labels, "outcome": "ok"})
        usage = response.usage
        self._metrics.tokens.record(usage.input_tokens, {**labels, "gen_ai.token.type": "input"})
        self._metrics.tokens.record(usage.output_tokens, {**labels, "gen_ai.token.type": "output"})
        if usage.HasField("cost"):
            self._metrics.cost.add(usage.cost, labels)
        span = started.span
        span.set_attribute("gen_ai.response.model", started.attempt.endpoint.model)
        if response.status != response_pb2.RESPONSE_STATUS_FAILED:
            # Throughput needs a streamed upstream call: unary upstream calls deliver everything at once.
            self.router.record_success(started.attempt.endpoint, ttfb=started.first_at - started.started_at,
                                       tokens=usage.output_tokens if started.stream else 0,
                                       duration=last - started.started_at)
        span.set_attribute("gen_ai.response.id", response.id)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if started.engine.limit is not None:
            span.set_attribute("switchboard.incomplete.limit", started.engine.limit)
            log.info("response %s ends incomplete: %s reached", response.id, started.engine.limit)
        if self._config.record_content:
            span.set_attribute("gen_ai.output.messages", orjson.dumps(
                [tracing.item_summary(item) for item in response.output]).decode())
        if response.status == response_pb2.RESPONSE_STATUS_FAILED:
            span.set_status(Status(StatusCode.ERROR, response.error.code))
        span.end()

