"""Background responses: submitted as `queued`, run by workers that claim jobs with leases (several replicas
share one PostgreSQL queue), with events persisted so a stream can be resumed from any sequence number."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

from service.engine import Event, TurnEngine
from service.errors import ApiError, internal
from service.store import Job, Store
from service.turns import TurnRunner
from switchboard.responses.v1 import response_pb2, responses_service_pb2

log = logging.getLogger(__name__)
Request = responses_service_pb2.CreateResponseRequest
_TERMINAL_EVENTS = {"response_completed", "response_failed", "response_incomplete"}
TERMINAL_STATUSES = {response_pb2.RESPONSE_STATUS_COMPLETED, response_pb2.RESPONSE_STATUS_FAILED,
                     response_pb2.RESPONSE_STATUS_INCOMPLETE, response_pb2.RESPONSE_STATUS_CANCELLED}


class BackgroundWorker:
    def __init__(self, runner: TurnRunner, store: Store, *, lease_seconds: float = 15.0, poll_seconds: float = 0.1,
                 max_attempts: int = 3, concurrency: int = 4) -> None:
        self._runner = runner
        self._store = store
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._max_attempts = max_attempts
        self._slots = asyncio.Semaphore(concurrency)
        self.worker_id = f"worker_{secrets.token_hex(8)}"
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Request, owner: str) -> response_pb2.Response:
        """Checks the request now (so a bad one is a 4xx), stores it as `queued` and enqueues the job."""
        # validate() (in prepare) refuses `background` with `store: false`.
        history = None
        if request.previous_response_id:
            history = await self._runner.history(owner, request.previous_response_id)
        prepared = self._runner.prepare(request, stream=True, timeout=None, history=history)
        response = prepared.response
        response.background, response.store = True, True
        events = TurnEngine(response, prepared.options).queue()
        expires = time.time() + self._runner.config.retention_seconds if self._runner.config.retention_seconds else None
        await self._store.save_response(owner, response, request, prepared.inputs, expires_at=expires,
                                        job_request=request.SerializeToString())
        await self._store.append_events(response.id, events)
        return response

    async def run_forever(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                if time.monotonic() - last_sweep > self._lease:
                    last_sweep = time.monotonic()
                    await self._store.fail_stale_jobs(self._max_attempts)
                await self._slots.acquire()
                job = await self._store.claim(self.worker_id, self._lease, max_attempts=self._max_attempts)
                if job is None:
                    self._slots.release()
                    await asyncio.sleep(self._poll)
                    continue
                task = asyncio.create_task(self._run_job(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the background worker loop failed; retrying")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run_job(self, job: Job) -> None:
        try:
            await self._run(job)
        except Exception:
            log.exception("background job %s failed", job.response_id)
        finally:
            self._slots.release()

    async def _run(self, job: Job) -> None:
        stored = await self._store.get_response(job.owner, job.response_id)
        if stored is None or stored.response.status in TERMINAL_STATUSES:
            await self._store.finish_job(job.id, job.worker_id)
            return
        cancel = asyncio.Event()
        lost = asyncio.Event()
        watcher = asyncio.create_task(self._watch(job, cancel, lost))
        try:
            try:
                started = await self._runner.start(stored.request, owner=job.owner, stream=True, timeout=None,
                                                   resumed=stored.response)
            except ApiError as error:
                await self._end_without_start(job, stored.response, error)
                return
            running = started.engine.response
            await self._store.update_status(job.owner, job.response_id, running)
            batch: list[Event] = []
            last_flush = time.monotonic()
            async for event in self._runner.run(started, cancel):
                if lost.is_set():
                    return  # another worker took the job over; it owns the rest of the stream
                batch.append(event)
                if len(batch) >= 32 or time.monotonic() - last_flush > 0.05:
                    await self._store.append_events(job.response_id, batch)
                    batch, last_flush = [], time.monotonic()
            if batch:
                await self._store.append_events(job.response_id, batch)
            await self._store.finish_job(job.id, job.worker_id)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _end_without_start(self, job: Job, response: response_pb2.Response, error: ApiError) -> None:
        engine = TurnEngine(response, first_sequence=2)
        events = engine.fail(error)
        await self._store.update_status(job.owner, job.response_id, engine.response)
        await self._store.append_events(job.response_id, events)
        await self._store.finish_job(job.id, job.worker_id)

    async def _watch(self, job: Job, cancel: asyncio.Event, lost: asyncio.Event) -> None:
        """Keeps the lease alive and notices a cancel request."""
        while True:
            await asyncio.sleep(min(0.2, self._lease / 3))
            if await self._store.cancel_requested(job.response_id):
                cancel.set()
            if not await self._store.heartbeat(job.id, job.worker_id, self._lease):
                lost.set()
                cancel.set()
                return


async def tail(store: Store, owner: str, response_id: str, after: int, *, poll: float = 0.05,
               idle_timeout: float = 600.0) -> AsyncIterator[Event]:
    """The persisted events after ``after``, following a running response until its terminal event."""
    idle_since = time.monotonic()
    while True:
        events = await store.events_after(response_id, after)
        for event in events:
            after = event.sequence_number
            yield event
            if event.WhichOneof("event") in _TERMINAL_EVENTS:
                return
        if events:
            idle_since = time.monotonic()
            continue
        stored = await store.get_response(owner, response_id)
        if stored is None:
            return
        if stored.response.status in TERMINAL_STATUSES and not await store.events_after(response_id, after):
            return
        if time.monotonic() - idle_since > idle_timeout:
            raise internal()
        await asyncio.sleep(poll)
