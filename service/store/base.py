"""The store interface: stored responses, background jobs and persisted stream events, scoped by owner.

Every method that a client request reaches takes ``owner`` (the API key id): a row of another owner is never
returned, changed or deleted. The worker-side methods (jobs, events, ``cancel_requested``) take ids the service
got from a scoped call, or from a claimed job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from switchboard.responses.v1 import events_pb2, items_pb2, response_pb2, responses_service_pb2

Response = response_pb2.Response
Item = items_pb2.Item
StreamEvent = events_pb2.StreamEvent
CreateResponseRequest = responses_service_pb2.CreateResponseRequest
Order = Literal["asc", "desc"]

TERMINAL_STATUSES = frozenset(
    {
        response_pb2.RESPONSE_STATUS_COMPLETED,
        response_pb2.RESPONSE_STATUS_FAILED,
        response_pb2.RESPONSE_STATUS_INCOMPLETE,
        response_pb2.RESPONSE_STATUS_CANCELLED,
    }
)
# The error a response gets when its background job was abandoned too often.
STALE_JOB_ERROR = ("server_error", "the background job was abandoned by its workers too many times")


@dataclass(frozen=True)
class StoredResponse:
    response: Response
    request: CreateResponseRequest
    input_items: list[Item]


@dataclass(frozen=True)
class Save:
    """One response to save in a batch (``Store.save_responses``): the decoded objects and their row values."""

    owner: str
    stored: StoredResponse
    expires_at: float | None
    row: tuple[str, str, int, int, str | None, float | None, bytes, bytes]
    items: list[tuple[str, int, str, bytes]]

    @classmethod
    def of(cls, owner: str, response: Response, request: CreateResponseRequest, input_items: list[Item],
           expires_at: float | None) -> Save:
        """Serializes the rows now: a response without item ids raises ValueError here, not in the batch."""
        return cls(owner, StoredResponse(response, request, input_items), expires_at,
                   response_row(owner, response, request, expires_at), item_rows(response.id, input_items))


@dataclass(frozen=True)
class ItemPage:
    items: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


@dataclass(frozen=True)
class Job:
    """A claimed background job. ``id`` is the response id; ``attempts`` counts claims, this one included."""

    id: str
    owner: str
    response_id: str
    request: bytes
    worker_id: str
    attempts: int
    lease_expires_at: float


class Store(Protocol):
    async def migrate(self) -> None:
        """Apply pending schema migrations; safe to run concurrently from several replicas."""

    async def close(self) -> None: ...

    # Responses.
    async def save_response(
        self,
        owner: str,
        response: Response,
        request: CreateResponseRequest,
        input_items: list[Item],
        *,
        expires_at: float | None,
        job_request: bytes | None = None,
    ) -> None:
        """Insert or replace (by ``response.id``) a response with its request and input items.

        Every input item must have an id (ValueError otherwise). With ``job_request`` a background job is
        enqueued in the same transaction. Saving an id that another owner holds raises ValueError.
        """

    async def save_responses(self, saves: list[Save]) -> list[str]:
        """Save many responses (none with a job) in one transaction; one whose id another owner holds is skipped.
        Returns the ids skipped."""

    async def get_response(self, owner: str, id: str) -> StoredResponse | None: ...

    async def delete_response(self, owner: str, id: str) -> bool:
        """Delete the response with its input items, events and job."""

    async def update_status(self, owner: str, id: str, response: Response) -> bool:
        """Replace the response snapshot (and its status column); False when there is no such response."""

    async def list_input_items(
        self, owner: str, id: str, *, after: str | None, before: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        """A page of the response's input items; None when there is no such response.

        ``after``/``before`` are item ids, relative to ``order``. An id that is not an input item of the response
        raises ValueError.
        """

    async def chain(self, owner: str, id: str, max_depth: int = 1000) -> list[StoredResponse]:
        """The response and its ``previous_response_id`` ancestors, oldest first, at most ``max_depth``.

        Empty when ``id`` does not exist. Where an ancestor is missing (deleted, expired, another owner's) the
        chain stops: ``chain[0].response.previous_response_id`` is then set.
        """

    # Background jobs.
    async def enqueue(self, owner: str, response_id: str, request: bytes) -> None:
        """Queue a job for the response (job id = response id); a no-op when the job exists."""

    async def claim(self, worker_id: str, lease_seconds: float, *, max_attempts: int | None = None) -> Job | None:
        """Claim one queued job, or one whose lease expired (if it had fewer than ``max_attempts`` claims)."""

    async def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the worker no longer holds the job (then it must stop)."""

    async def finish_job(self, job_id: str, worker_id: str) -> None:
        """Remove the job if the worker holds it."""

    async def fail_stale_jobs(self, max_attempts: int) -> list[str]:
        """Fail the jobs whose lease expired after ``max_attempts`` claims, with their responses (unless those are
        already terminal; a ``response.failed`` event ends their persisted stream). Returns the response ids."""

    async def request_cancel(self, owner: str, id: str) -> bool:
        """Flag the response for cancellation; False when there is no such response."""

    async def cancel_requested(self, id: str) -> bool: ...

    async def cancel_queued(self, owner: str, id: str, response: Response, events: list[StreamEvent]) -> bool:
        """In one transaction: if no worker has claimed the response's job yet, drop the job, store the
        cancelled snapshot and its events, and return True; otherwise change nothing and return False."""

    # Persisted stream events.
    async def append_events(self, response_id: str, events: list[StreamEvent]) -> None:
        """Store events by their ``sequence_number``; an event already stored is kept as it was."""

    async def events_after(self, response_id: str, after_sequence: int) -> list[StreamEvent]:
        """Events with ``sequence_number > after_sequence``, in order."""

    # Retention.
    async def delete_expired(self, now: float, *, created_before: float | None = None) -> int:
        """Delete responses with ``expires_at <= now`` (or ``created_at < created_before``); returns the count."""


def item_id(item: Item) -> str | None:
    """The id of an input item (for an item reference: the referenced id)."""
    kind = item.WhichOneof("item")
    if kind is None:
        return None
    if kind == "other":
        value = item.other.fields.get("id")
        return (value.string_value or None) if value is not None and value.HasField("string_value") else None
    if kind == "item_reference":
        return item.item_reference.id or None
    inner = getattr(item, kind)
    return str(inner.id) if inner.HasField("id") and inner.id else None


def response_row(
    owner: str, response: Response, request: CreateResponseRequest, expires_at: float | None
) -> tuple[str, str, int, int, str | None, float | None, bytes, bytes]:
    """The values of a ``responses`` row: id, owner, status, created_at, previous_response_id, expires_at,
    response, request."""
    previous = response.previous_response_id if response.HasField("previous_response_id") else None
    return (
        response.id,
        owner,
        int(response.status),
        response.created_at,
        previous,
        expires_at,
        response.SerializeToString(),
        request.SerializeToString(),
    )


def item_rows(response_id: str, items: list[Item]) -> list[tuple[str, int, str, bytes]]:
    """The values of the ``input_items`` rows: response_id, position, item_id, item."""
    ids = item_ids(items)
    pairs = enumerate(zip(ids, items, strict=True))
    return [(response_id, pos, iid, item.SerializeToString()) for pos, (iid, item) in pairs]


def item_ids(items: list[Item]) -> list[str]:
    ids = []
    for index, item in enumerate(items):
        found = item_id(item)
        if found is None:
            raise ValueError(f"input item {index} has no id")
        ids.append(found)
    return ids


@dataclass(frozen=True)
class PageQuery:
    """How to read a page: positions strictly between ``lo`` and ``hi``, scanned ascending or not, then reversed
    when the scan ran against the requested order."""

    lo: int
    hi: int
    scan_asc: bool
    reverse: bool
    fetch: int


NO_POSITION = 1 << 62


def page_query(after_pos: int | None, before_pos: int | None, limit: int, order: Order) -> PageQuery:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if order not in ("asc", "desc"):
        raise ValueError("order must be 'asc' or 'desc'")
    lo, hi = -1, NO_POSITION
    if order == "asc":
        lo = after_pos if after_pos is not None else lo
        hi = before_pos if before_pos is not None else hi
        scan_asc = not (before_pos is not None and after_pos is None)
    else:
        hi = after_pos if after_pos is not None else hi
        lo = before_pos if before_pos is not None else lo
        scan_asc = before_pos is not None and after_pos is None
    return PageQuery(lo, hi, scan_asc, scan_asc != (order == "asc"), limit + 1)


def make_page(items: list[Item], query: PageQuery) -> ItemPage:
    has_more = len(items) >= query.fetch
    items = items[: query.fetch - 1]
    if query.reverse:
        items.reverse()
    return ItemPage(
        items=items,
        first_id=item_id(items[0]) if items else None,
        last_id=item_id(items[-1]) if items else None,
        has_more=has_more,
    )


def failed_snapshot(blob: bytes) -> bytes | None:
    """The snapshot turned failed by an abandoned job, or None when it is already terminal."""
    response = Response.FromString(blob)
    if response.status in TERMINAL_STATUSES:
        return None
    response.status = response_pb2.RESPONSE_STATUS_FAILED
    response.error.code, response.error.message = STALE_JOB_ERROR
    return response.SerializeToString()


def failed_event(snapshot: bytes, sequence_number: int) -> bytes:
    event = StreamEvent(sequence_number=sequence_number)
    event.response_failed.response.CopyFrom(Response.FromString(snapshot))
    return event.SerializeToString()


def decode_stored(response: bytes, request: bytes, items: list[bytes]) -> StoredResponse:
    return StoredResponse(
        response=Response.FromString(response),
        request=CreateResponseRequest.FromString(request),
        input_items=[Item.FromString(blob) for blob in items],
    )
