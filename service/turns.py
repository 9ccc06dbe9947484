"""Serving one turn: check and resolve the request, try the upstream attempts in order until one starts
(model fallbacks and provider routing), then run the turn engine to the end, with a span per attempt and metrics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from service import telemetry
from service.config import Config
from service.crypto import Sealer
from service.engine import Event, TurnEngine
from service.errors import ApiError, UpstreamError, internal
from service.metrics import Metrics
from service.providers.base import Delta, Finish, Provider
from service.requests import ModelRef, Prepared, prepare, resolve_model
from switchboard.responses.v1 import response_pb2, responses_service_pb2

Request = responses_service_pb2.CreateResponseRequest
tracer = trace.get_tracer("switchboard.service")


def should_fall_back(error: ApiError) -> bool:
    """Failures before any output that another model or endpoint may not have."""
    if error.code == "context_length_exceeded":
        return True
    return isinstance(error, UpstreamError) and error.retryable


@dataclass
class Attempt:
    model: ModelRef
    provider_name: str
    upstream_model: str


@dataclass
class Started:
    """A turn whose upstream has produced its first delta (or finished without any)."""

    prepared: Prepared
    engine: TurnEngine
    attempt: Attempt
    deltas: AsyncGenerator[Delta, None]
    first: Delta | None
    span: Span
    started_at: float
    first_at: float
    stream: bool


class TurnRunner:
    def __init__(self, config: Config, providers: dict[str, Provider], metrics: Metrics) -> None:
        self._config = config
        self._providers = providers
        self._metrics = metrics
        self._sealer = Sealer(config.encryption_key)

    @property
    def sealer(self) -> Sealer:
        return self._sealer

    def attempts(self, request: Request, prepared: Prepared) -> list[Attempt]:
        """`model`, then each of `models`, in order."""
        refs = [prepared.model]
        for index, name in enumerate(request.models):
            ref = resolve_model(name, self._config, param=f"models[{index}]")
            if ref not in refs:
                refs.append(ref)
        return [Attempt(model=ref, provider_name=ref.provider, upstream_model=ref.model) for ref in refs]

    async def start(self, request: Request, *, stream: bool, timeout: float | None,
                    metadata: Sequence[tuple[str, Any]] | None = None) -> Started:
        started_at = time.monotonic()
        telemetry.annotate(request, metadata)
        prepared = prepare(request, self._config, stream=stream, timeout=timeout, sealer=self._sealer)
        attempts = self.attempts(request, prepared)
        for position, attempt in enumerate(attempts):
            last = position == len(attempts) - 1
            turn = dataclasses.replace(prepared.turn, model=attempt.upstream_model)
            if timeout is not None:
                turn.timeout = max(0.0, timeout - (time.monotonic() - started_at))
            span = self._attempt_span(attempt, prepared)
            deltas = self._providers[attempt.provider_name].stream(turn)
            try:
                with trace.use_span(span, end_on_exit=False):
                    first: Delta | None = await anext(deltas, None)
            except ApiError as error:
                await deltas.aclose()
                self._attempt_failed(span, attempt, error)
                if not last and should_fall_back(error):
                    continue
                self._count(prepared.model, error.status.name)
                raise
            except BaseException as error:
                await deltas.aclose()
                self._attempt_failed(span, attempt, error)
                raise
            response = prepared.response
            response.model = attempt.model.full
            return Started(prepared=prepared, engine=TurnEngine(response, prepared.options), attempt=attempt,
                           deltas=deltas, first=first, span=span, started_at=started_at,
                           first_at=time.monotonic(), stream=stream)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def run(self, started: Started) -> AsyncIterator[Event]:
        """The events of the whole turn; ends with exactly one terminal event, whatever fails."""
        engine = started.engine
        if started.stream:
            self._metrics.active_streams.add(1)
        finish_reason: str | None = None
        status = "OK"
        try:
            for event in engine.start():
                yield event
            if started.first is not None:
                self._metrics.time_to_first_token.record(started.first_at - started.started_at,
                                                         self._labels(started))
                for event in engine.feed(started.first):
                    yield event
                async for delta in started.deltas:
                    if isinstance(delta, Finish):
                        finish_reason = delta.reason
                    for event in engine.feed(delta):
                        yield event
                if isinstance(started.first, Finish):
                    finish_reason = started.first.reason
            for event in engine.finish():
                yield event
        except ApiError as error:
            status = error.status.name
            self._attempt_failed(started.span, started.attempt, error, end=False)
            for event in engine.fail(error):
                yield event
        except Exception as error:
            status = "INTERNAL"
            self._attempt_failed(started.span, started.attempt, error, end=False)
            for event in engine.fail(internal()):
                yield event
        finally:
            await started.deltas.aclose()
            if started.stream:
                self._metrics.active_streams.add(-1)
            self._finish(started, finish_reason, status)

    # ------------------------------------------------------------ telemetry

    def _attempt_span(self, attempt: Attempt, prepared: Prepared) -> Span:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": attempt.provider_name,
            "gen_ai.request.model": attempt.upstream_model,
            "switchboard.model": attempt.model.full,
        }
        turn = prepared.turn
        for key, value in (("gen_ai.request.max_tokens", turn.max_output_tokens),
                           ("gen_ai.request.temperature", turn.temperature), ("gen_ai.request.top_p", turn.top_p)):
            if value is not None:
                attributes[key] = value
        if self._config.record_content:
            attributes["gen_ai.input.messages"] = orjson.dumps(
                [telemetry.item_summary(item) for item in turn.items]).decode()
        return tracer.start_span(f"chat {attempt.upstream_model}", kind=SpanKind.CLIENT, attributes=attributes)

    def _attempt_failed(self, span: Span, attempt: Attempt, error: BaseException, *, end: bool = True) -> None:
        code = error.code if isinstance(error, ApiError) else type(error).__name__
        span.set_status(Status(StatusCode.ERROR, str(code)))
        span.set_attribute("error.type", str(code))
        self._metrics.upstream_errors.add(1, {"provider": attempt.provider_name, "code": str(code)})
        if end:
            span.end()

    def _labels(self, started: Started) -> dict[str, str]:
        return {"model": started.attempt.model.full, "provider": started.attempt.provider_name}

    def _count(self, model: ModelRef, status: str) -> None:
        self._metrics.requests.add(1, {"route": "responses", "status": status, "model": model.full,
                                       "provider": model.provider})

    def _finish(self, started: Started, finish_reason: str | None, status: str) -> None:
        response = started.engine.response
        labels = self._labels(started)
        elapsed = time.monotonic() - started.started_at
        self._metrics.requests.add(1, {"route": "responses", "status": status, **labels})
        self._metrics.duration.record(elapsed, labels)
        self._metrics.upstream_duration.record(elapsed, labels)
        usage = response.usage
        self._metrics.tokens.record(usage.input_tokens, {**labels, "gen_ai.token.type": "input"})
        self._metrics.tokens.record(usage.output_tokens, {**labels, "gen_ai.token.type": "output"})
        if usage.HasField("cost"):
            self._metrics.cost.add(usage.cost, labels)
        span = started.span
        span.set_attribute("gen_ai.response.model", started.attempt.upstream_model)
        span.set_attribute("gen_ai.response.id", response.id)
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if self._config.record_content:
            span.set_attribute("gen_ai.output.messages", orjson.dumps(
                [telemetry.item_summary(item) for item in response.output]).decode())
        if response.status == response_pb2.RESPONSE_STATUS_FAILED:
            span.set_status(Status(StatusCode.ERROR, response.error.code))
        span.end()

