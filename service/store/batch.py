"""Group commit: finished foreground responses are saved by one writer, many per transaction, off the request path.

``save_response`` of a response that is neither background nor carries a job only queues it and returns; a writer
task commits what queued up during one commit window (``window`` seconds) in a single transaction, then the next.
The queue is bounded: at ``max_pending`` responses a save waits for the writer (backpressure, never a drop).

Reads see the queue (read your own writes): ``get_response``, ``chain`` and ``list_input_items`` find a queued or
committing response before its transaction ends. A write that concerns a queued response (update, delete, cancel)
waits until it is committed, so the order of writes to one response is kept. Background responses and everything
about jobs and stream events are written through at once, as before.

What "stored" means when the process ends: ``close()`` (graceful stop, SIGTERM) commits the queue first, so a
response whose reply was sent is never lost; a process killed outright (SIGKILL, power loss) loses at most the
responses of the last commit window, never a background response's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential_jitter

from switchboard.service.store.base import (
    CreateResponseRequest,
    Item,
    ItemPage,
    Job,
    Order,
    Response,
    Save,
    StoredResponse,
    StreamEvent,
    item_id,
    make_page,
    page_query,
)

if TYPE_CHECKING:
    from switchboard.service.store.base import Store

log = logging.getLogger(__name__)
_ATTEMPTS = 3


class GroupCommitStore:
    def __init__(self, inner: Store, *, window: float = 0.002, max_pending: int = 4096) -> None:
        self.inner = inner
        self.window = window
        self._max_pending = max_pending
        self._queued: dict[str, Save] = {}
        self._committing: dict[str, Save] = {}
        self._queued_done: asyncio.Future[None] | None = None
        self._committing_done: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # The writer.

    def _start(self) -> None:
        if self._writer is None:
            self._wake, self._hurry = asyncio.Event(), asyncio.Event()
            self._writer = asyncio.create_task(self._write_forever(), name="switchboard-group-commit")

    async def _write_forever(self) -> None:
        assert self._wake is not None and self._hurry is not None
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.window > 0 and not self._closing and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.window)
            self._hurry.clear()
            self._committing, self._queued = self._queued, {}
            self._committing_done, self._queued_done = self._queued_done, None
            try:
                # A failed transaction (a busy database, a dropped connection) is tried again; meanwhile the batch
                # stays readable.
                async for attempt in AsyncRetrying(stop=stop_after_attempt(_ATTEMPTS), reraise=True,
                                                   wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05)):
                    with attempt:
                        skipped = await self.inner.save_responses(list(self._committing.values()))
                for rid in skipped:
                    log.error("response %s was not stored: its id belongs to another owner", rid)
            except Exception:
                log.exception("a batch of %d responses could not be stored", len(self._committing))
            finally:
                self._committing = {}
                if self._committing_done is not None:
                    self._committing_done.set_result(None)
                    self._committing_done = None

    async def flush(self) -> None:
        """Returns when every response queued before the call is committed (or failed to be), at once: the
        commit window is cut short."""
        if self._hurry is not None and self._queued:
            self._hurry.set()
        for done in (self._queued_done, self._committing_done):
            if done is not None:
                await asyncio.shield(done)

    async def _settle(self, id: str) -> None:
        """Waits until a queued or committing response ``id`` is committed."""
        if id in self._queued or id in self._committing:
            await self.flush()

    def _pending(self, owner: str, id: str) -> Save | None:
        save = self._queued.get(id) or self._committing.get(id)
        return save if save is not None and save.owner == owner else None

    # Lifecycle.

    async def migrate(self) -> None:
        await self.inner.migrate()

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            assert self._wake is not None and self._hurry is not None
            self._wake.set()
            self._hurry.set()
            await self._writer
        await self.inner.close()

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
        if job_request is not None or response.background or self._closing:
            await self._settle(response.id)
            await self.inner.save_response(owner, response, request, input_items, expires_at=expires_at,
                                           job_request=job_request)
            return
        save = Save.of(owner, response, request, input_items, expires_at)
        self._start()
        while len(self._queued) >= self._max_pending:
            await self.flush()
        held = self._queued.get(response.id) or self._committing.get(response.id)
        if held is not None and held.owner != owner:
            raise ValueError(f"response {response.id!r} belongs to another owner")
        self._queued[response.id] = save
        if self._queued_done is None:
            self._queued_done = asyncio.get_running_loop().create_future()
        assert self._wake is not None
        self._wake.set()

    async def save_responses(self, saves: list[Save]) -> list[str]:
        await self.flush()
        return await self.inner.save_responses(saves)

    async def get_response(self, owner: str, id: str) -> StoredResponse | None:
        save = self._pending(owner, id)
        return save.stored if save is not None else await self.inner.get_response(owner, id)

    async def delete_response(self, owner: str, id: str) -> bool:
        await self._settle(id)
        return await self.inner.delete_response(owner, id)

    async def update_status(self, owner: str, id: str, response: Response) -> bool:
        await self._settle(id)
        return await self.inner.update_status(owner, id, response)

    async def list_input_items(
        self, owner: str, id: str, *, after: str | None, before: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        save = self._pending(owner, id)
        if save is None:
            return await self.inner.list_input_items(owner, id, after=after, before=before, limit=limit, order=order)
        items = save.stored.input_items
        ids = [item_id(item) for item in items]

        def position(name: str, item: str | None) -> int | None:
            if item is None:
                return None
            if item not in ids:
                raise ValueError(f"{name}: the response has no input item {item!r}")
            return ids.index(item)

        query = page_query(position("after", after), position("before", before), limit, order)
        between = [item for pos, item in enumerate(items) if query.lo < pos < query.hi]
        return make_page((between if query.scan_asc else between[::-1])[: query.fetch], query)

    async def chain(self, owner: str, id: str, max_depth: int = 1000) -> list[StoredResponse]:
        newest: list[StoredResponse] = []
        current: str | None = id
        while current is not None and len(newest) < max_depth:
            save = self._pending(owner, current)
            if save is None:
                older = await self.inner.chain(owner, current, max_depth - len(newest))
                return older + newest[::-1]
            newest.append(save.stored)
            response = save.stored.response
            current = response.previous_response_id if response.HasField("previous_response_id") else None
        return newest[::-1]

    # Background jobs: written through.

    async def enqueue(self, owner: str, response_id: str, request: bytes) -> None:
        await self._settle(response_id)
        await self.inner.enqueue(owner, response_id, request)

    async def claim(self, worker_id: str, lease_seconds: float, *, max_attempts: int | None = None) -> Job | None:
        return await self.inner.claim(worker_id, lease_seconds, max_attempts=max_attempts)

    async def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        return await self.inner.heartbeat(job_id, worker_id, lease_seconds)

    async def finish_job(self, job_id: str, worker_id: str) -> None:
        await self.inner.finish_job(job_id, worker_id)

    async def fail_stale_jobs(self, max_attempts: int) -> list[str]:
        return await self.inner.fail_stale_jobs(max_attempts)

    async def request_cancel(self, owner: str, id: str) -> bool:
        await self._settle(id)
        return await self.inner.request_cancel(owner, id)

    async def cancel_requested(self, id: str) -> bool:
        return await self.inner.cancel_requested(id)

    async def cancel_queued(self, owner: str, id: str, response: Response, events: list[StreamEvent]) -> bool:
        await self._settle(id)
        return await self.inner.cancel_queued(owner, id, response, events)

    # Persisted stream events: written through.

    async def append_events(self, response_id: str, events: list[StreamEvent]) -> None:
        await self.inner.append_events(response_id, events)

    async def events_after(self, response_id: str, after_sequence: int) -> list[StreamEvent]:
        return await self.inner.events_after(response_id, after_sequence)

    # Retention.

    async def delete_expired(self, now: float, *, created_before: float | None = None) -> int:
        await self.flush()
        return await self.inner.delete_expired(now, created_before=created_before)
