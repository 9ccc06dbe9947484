"""The Responses gRPC servicer: thin handlers over the turn runner, the store and the background worker."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

import grpc

from switchboard.responses.v1 import (
    events_pb2,
    items_pb2,
    response_pb2,
    responses_service_pb2_grpc,
)
from switchboard.responses.v1 import (
    responses_service_pb2 as pb,
)
from switchboard.service.api.auth import ApiKeys, abort, owner_of
from switchboard.service.api.session import session
from switchboard.service.pipeline.background import TERMINAL_STATUSES, BackgroundWorker, tail
from switchboard.service.pipeline.engine import TurnEngine, new_id
from switchboard.service.pipeline.requests import (
    COMPACTION_PURPOSE,
    expand_compactions,
    input_items,
    normalised_input_item,
)
from switchboard.service.pipeline.streams import batches
from switchboard.service.pipeline.turns import Started, TurnRunner
from switchboard.service.routing.ratelimit import RateLimiter, headers, rejected
from switchboard.service.store import Store, StoredResponse
from switchboard.shared.errors import ApiError, internal, invalid

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
OMITTED_TOOLS_HEADER = "x-switchboard-omitted-tools"
T = TypeVar("T")


def _is_delta(event: events_pb2.StreamEvent) -> bool:
    return str(event.WhichOneof("event")).endswith("_delta")


def not_found(response_id: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, "not_found", f"No response found with id {response_id!r}.",
                    param="response_id")


class ResponsesServicer(responses_service_pb2_grpc.ResponsesServicer):
    def __init__(self, runner: TurnRunner, keys: ApiKeys, *, store: Store | None = None,
                 worker: BackgroundWorker | None = None, limiter: RateLimiter | None = None) -> None:
        self._runner = runner
        self._keys = keys
        self._store = store
        self._worker = worker
        self._limiter = limiter

    # ------------------------------------------------------------ helpers

    def _owner(self, context: Context) -> str:
        return owner_of(tuple(context.invocation_metadata() or ()), self._keys)

    async def _guard(self, context: Context, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Runs a unary handler body: API errors become statuses; anything else is logged, never leaked."""
        try:
            return await call()
        except ApiError as error:
            await abort(context, error)
        except Exception:
            log.exception("%s failed", what)
            await abort(context, internal())
        raise AssertionError("unreachable: abort raises")

    def _require_store(self) -> Store:
        if self._store is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "store_disabled", "This gateway stores nothing.")
        return self._store

    async def _stored(self, owner: str, response_id: str) -> StoredResponse:
        stored = await self._require_store().get_response(owner, response_id)
        if stored is None:
            raise not_found(response_id)
        return stored

    async def _admit(self, request: pb.CreateResponseRequest, owner: str,
                     context: Context | None) -> tuple[tuple[str, str], ...]:
        """Rate limits per API key, before anything reaches an upstream. Returns the headers to send."""
        if self._limiter is None:
            return ()
        decision = await self._limiter.check_request(owner, len(request.SerializeToString()) // 4)
        metadata = tuple(headers(decision).items())
        if not decision.allowed:
            self._runner.metrics.rate_limited.add(1)
            if context is not None:
                await context.send_initial_metadata(metadata)
            raise rejected(decision)
        return metadata

    async def _start(self, request: pb.CreateResponseRequest, context: Context, *, stream: bool) -> Started:
        owner = self._owner(context)
        metadata = await self._admit(request, owner, context)
        started = await self._runner.start(request, owner=owner, stream=stream, timeout=context.time_remaining(),
                                           metadata=tuple(context.invocation_metadata() or ()))
        if started.prepared.omitted_tools:
            # Tool types are client text: only printable ASCII fits a header value.
            names = ",".join(started.prepared.omitted_tools)
            metadata += ((OMITTED_TOOLS_HEADER, "".join(c if " " <= c <= "~" else "?" for c in names)),)
        if metadata:
            await context.send_initial_metadata(metadata)
        return started

    async def _record_tokens(self, owner: str, response: response_pb2.Response) -> None:
        if self._limiter is not None:
            await self._limiter.record_tokens(owner, response.usage.total_tokens)

    # ------------------------------------------------------------ create

    async def CreateResponse(self, request: pb.CreateResponseRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> response_pb2.Response:
        async def create() -> response_pb2.Response:
            if request.background:
                return await self._background(request, context)
            started = await self._start(request, context, stream=False)
            async for _ in self._runner.run(started):
                pass
            response = started.engine.response
            await self._record_tokens(started.owner, response)
            if response.status == response_pb2.RESPONSE_STATUS_FAILED:
                # A unary call has no stream to carry the failure: it is the call's status.
                failure = started.engine.failure
                raise ApiError(grpc.StatusCode.UNAVAILABLE, failure.code if failure else response.error.code,
                               response.error.message, http_status=502)
            return response

        return await self._guard(context, create, "CreateResponse")

    async def _background(self, request: pb.CreateResponseRequest, context: Context) -> response_pb2.Response:
        if self._worker is None:
            raise invalid("Background mode needs a store.", "background", code="store_disabled")
        owner = self._owner(context)
        metadata = await self._admit(request, owner, context)
        if metadata:
            await context.send_initial_metadata(metadata)
        return await self._worker.submit(request, owner)

    async def StreamResponse(self, request: pb.CreateResponseRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> AsyncIterator[events_pb2.StreamEvent]:
        events = await self._events(request, context)
        if events is not None:
            async for event in events:
                yield event

    async def StreamResponseBatched(self, request: pb.CreateResponseRequest,  # noqa: N802 (gRPC method name)
                                    context: Context) -> AsyncIterator[pb.StreamEventBatch]:
        events = await self._events(request, context)
        if events is not None:
            async for batch in batches(events, first_flush=_is_delta):
                yield pb.StreamEventBatch(events=batch)

    async def _events(self, request: pb.CreateResponseRequest,
                      context: Context) -> AsyncIterator[events_pb2.StreamEvent] | None:
        """The events of a streamed response, once it has started (the runner's own generator, with no layer of
        ours around it: every layer costs each event a resumption). A failure to start aborts the call."""
        try:
            if request.background:
                # The job runs in a worker; this stream follows its persisted events.
                response = await self._background(request, context)
                return tail(self._require_store(), self._owner(context), response.id, -1)
            # The upstream's first delta comes before the first event, so a failure to start is a status
            # (an HTTP 4xx/5xx at the edge) rather than a failed stream.
            started = await self._start(request, context, stream=True)
        except ApiError as error:
            await abort(context, error)
            return None
        except Exception:
            log.exception("StreamResponse failed before the first event")
            await abort(context, internal())
            return None
        started.on_finish = functools.partial(self._record_tokens, started.owner)
        return self._runner.run(started)

    # ------------------------------------------------------------ stored responses

    async def GetResponse(self, request: pb.GetResponseRequest,  # noqa: N802 (gRPC method name)
                          context: Context) -> response_pb2.Response:
        async def get() -> response_pb2.Response:
            return (await self._stored(self._owner(context), request.response_id)).response

        return await self._guard(context, get, "GetResponse")

    async def ResumeResponse(self, request: pb.GetResponseRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> AsyncIterator[events_pb2.StreamEvent]:
        owner = self._owner(context)
        try:
            stored = await self._stored(owner, request.response_id)
            if not stored.response.background:
                raise invalid("Only background responses can be streamed again.", "stream")
        except ApiError as error:
            await abort(context, error)
            return
        after = request.starting_after if request.HasField("starting_after") else -1
        async for event in tail(self._require_store(), owner, request.response_id, after):
            yield event

    async def DeleteResponse(self, request: pb.DeleteResponseRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> pb.DeletedResponse:
        async def delete() -> pb.DeletedResponse:
            if not await self._require_store().delete_response(self._owner(context), request.response_id):
                raise not_found(request.response_id)
            return pb.DeletedResponse(id=request.response_id, object="response", deleted=True)

        return await self._guard(context, delete, "DeleteResponse")

    async def CancelResponse(self, request: pb.CancelResponseRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> response_pb2.Response:
        async def cancel() -> response_pb2.Response:
            owner = self._owner(context)
            store = self._require_store()
            stored = await self._stored(owner, request.response_id)
            if not stored.response.background:
                raise invalid("Only background responses can be cancelled.", "response_id")
            if stored.response.status in TERMINAL_STATUSES:
                return stored.response
            if stored.response.status == response_pb2.RESPONSE_STATUS_QUEUED:
                # Only if no worker has claimed it meanwhile (one transaction); otherwise it is running.
                engine = TurnEngine(stored.response, first_sequence=2)
                events = engine.cancel()
                if await store.cancel_queued(owner, request.response_id, engine.response, events):
                    return engine.response
            await store.request_cancel(owner, request.response_id)
            # Running: the worker notices the flag between deltas and ends the stream.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                current = await self._stored(owner, request.response_id)
                if current.response.status in TERMINAL_STATUSES:
                    return current.response
                await asyncio.sleep(0.05)
            return (await self._stored(owner, request.response_id)).response

        return await self._guard(context, cancel, "CancelResponse")

    async def ListInputItems(self, request: pb.ListInputItemsRequest,  # noqa: N802 (gRPC method name)
                             context: Context) -> pb.InputItemList:
        async def page() -> pb.InputItemList:
            limit = request.limit if request.HasField("limit") else 20
            if not 1 <= limit <= 100:
                raise invalid("'limit' must be between 1 and 100.", "limit")
            order: Literal["asc", "desc"] = "asc" if request.order == pb.LIST_ORDER_ASC else "desc"
            try:
                found = await self._require_store().list_input_items(
                    self._owner(context), request.response_id, limit=limit, order=order,
                    after=request.after if request.HasField("after") else None,
                    before=request.before if request.HasField("before") else None)
            except ValueError:
                raise invalid("'after' or 'before' is not an input item of this response.",
                              "after" if request.HasField("after") else "before") from None
            if found is None:
                raise not_found(request.response_id)
            result = pb.InputItemList(object="list", data=[normalised_input_item(i) for i in found.items],
                                      has_more=found.has_more)
            # openai-python requires both ids as strings, so an empty page has empty ids rather than nulls.
            result.first_id = found.first_id or ""
            result.last_id = found.last_id or ""
            return result

        return await self._guard(context, page, "ListInputItems")

    # ------------------------------------------------------------ compaction and sessions

    async def CompactResponse(self, request: pb.CompactResponseRequest,  # noqa: N802 (gRPC method name)
                              context: Context) -> pb.Compaction:
        async def compact() -> pb.Compaction:
            if not request.model:
                raise invalid("Missing required parameter: 'model'.", "model", code="missing_required_parameter")
            self._runner.resolve(request.model)
            owner = self._owner(context)
            history: list[items_pb2.Item] = []
            if request.previous_response_id:
                history = await self._runner.history(owner, request.previous_response_id)
            inputs = input_items(pb.CreateResponseRequest(input=request.input)) if request.HasField("input") else []
            # Compactions inside are opened now: a forged one is refused here, not on a later turn.
            context_items = expand_compactions(history + inputs, self._runner.sealer, "input")
            # Lossless: the whole context, sealed with the server key; sending the item back restores it.
            sealed = self._runner.sealer.seal(items_pb2.ItemList(items=context_items).SerializeToString(),
                                              COMPACTION_PURPOSE)
            item = items_pb2.Item(compaction=items_pb2.CompactionItem(id=new_id("cmp"), encrypted_content=sealed,
                                                                       created_by="switchboard"))
            usage = response_pb2.Usage(input_tokens_details=response_pb2.InputTokensDetails(),
                                       output_tokens_details=response_pb2.OutputTokensDetails())
            return pb.Compaction(id=new_id("cmp"), object="response.compaction", output=[item],
                                 created_at=int(time.time()), usage=usage)

        return await self._guard(context, compact, "CompactResponse")

    async def Session(self, request_iterator: AsyncIterator[pb.SessionRequest],  # noqa: N802 (gRPC method name)
                      context: Context) -> AsyncIterator[pb.SessionEvent]:
        metadata = tuple(context.invocation_metadata() or ())
        owner = self._owner(context)
        # Headers first: the edge waits for them before writing, so a refused call reports its real status.
        await context.send_initial_metadata(())

        async def admit(request: pb.CreateResponseRequest) -> None:
            await self._admit(request, owner, None)

        async for frame in session(self._runner, request_iterator, owner=owner, metadata=metadata, admit=admit):
            yield frame
