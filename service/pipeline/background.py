"""Background responses: submitted as `queued`, run by workers that claim jobs with leases (several replicas
share one PostgreSQL queue), with events persisted so a stream can be resumed from any sequence number."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc

from switchboard.responses.v1 import response_pb2, responses_service_pb2
from switchboard.service.mcp.tools import seal_secrets
from switchboard.service.pipeline.engine import Event, TurnEngine
from switchboard.service.pipeline.turns import Started, TurnRunner
from switchboard.service.store import Job, Store, StoredResponse
from switchboard.shared.errors import ApiError, internal

log = logging.getLogger(__name__)
# A re-claimed job whose previous worker died after streaming part of the response.
LOST_WORKER = ApiError(grpc.StatusCode.UNAVAILABLE, "server_error",
                       "The worker running this response stopped before it finished; it was not retried.")
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
        # MCP headers are needed by the worker that runs the job: stored sealed, never in the clear.
        request = seal_secrets(request, self._runner.sealer)
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
        if stored is None:
            await self._store.finish_job(job.id, job.worker_id)
            return
        if stored.response.status in TERMINAL_STATUSES:
            # A worker that died after saving the response may not have persisted its terminal event.
            await self._persist_terminal(job.response_id, stored.response)
            await self._store.finish_job(job.id, job.worker_id)
            return
        last = await self._last_sequence(job.response_id)
        if job.attempts > 1 and last > 1:
            # The worker that had the job died mid-stream: a run now would mix two runs in the persisted stream
            # (other item ids, reused sequence numbers), so the response fails instead.
            await self._end(job, stored.response, LOST_WORKER, first_sequence=last + 1)
            return
        # Claimed: the response is in progress from now on, even while the upstream has not answered yet, so a
        # cancel request goes through the worker (which stops the upstream call) rather than racing with it.
        running = response_pb2.Response()
        running.CopyFrom(stored.response)
        running.status = response_pb2.RESPONSE_STATUS_IN_PROGRESS
        await self._store.update_status(job.owner, job.response_id, running)
        cancel = asyncio.Event()
        lost = asyncio.Event()
        watcher = asyncio.create_task(self._watch(job, cancel, lost))
        try:
            started = await self._start(job, stored, cancel, lost)
            if started is None:
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

    async def _start(self, job: Job, stored: StoredResponse, cancel: asyncio.Event,
                     lost: asyncio.Event) -> Started | None:
        """Starts the upstream call, unless the response is cancelled (or the job lost) first: a cancel stops a
        slow start too. None when the job ended without a start: cancelled, lost, or failed to start."""
        starting = asyncio.create_task(self._runner.start(stored.request, owner=job.owner, stream=True,
                                                          timeout=None, resumed=stored.response))
        stopping = [asyncio.create_task(cancel.wait()), asyncio.create_task(lost.wait())]
        try:
            await asyncio.wait({starting, *stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in stopping:
                task.cancel()
            if not starting.done():
                starting.cancel()
            await asyncio.gather(starting, *stopping, return_exceptions=True)
        if cancel.is_set() or lost.is_set():
            if not starting.cancelled() and starting.exception() is None:
                await starting.result().deltas.aclose()
            if not lost.is_set():
                await self._end_cancelled(job, stored.response)
            return None
        try:
            return starting.result()
        except ApiError as error:
            await self._end(job, stored.response, error, first_sequence=2)
            return None

    async def _end_cancelled(self, job: Job, response: response_pb2.Response) -> None:
        current = await self._store.get_response(job.owner, job.response_id)
        events = await self._store.events_after(job.response_id, -1)
        if current is None:
            pass
        elif events and events[-1].WhichOneof("event") in _TERMINAL_EVENTS:
            # Cancelled while still queued, by the cancel call itself: its snapshot wins over this worker's.
            final = getattr(events[-1], str(events[-1].WhichOneof("event"))).response
            if current.response.status != final.status:
                await self._store.update_status(job.owner, job.response_id, final)
        elif current.response.status in TERMINAL_STATUSES:
            await self._persist_terminal(job.response_id, current.response)
        else:
            engine = TurnEngine(response, first_sequence=events[-1].sequence_number + 1 if events else 2)
            cancelled = engine.cancel()
            await self._store.update_status(job.owner, job.response_id, engine.response)
            await self._store.append_events(job.response_id, cancelled)
        await self._store.finish_job(job.id, job.worker_id)

    async def _last_sequence(self, response_id: str) -> int:
        events = await self._store.events_after(response_id, -1)
        return events[-1].sequence_number if events else -1

    async def _persist_terminal(self, response_id: str, response: response_pb2.Response) -> None:
        """Appends the terminal event of a terminal response when its persisted stream lacks one."""
        events = await self._store.events_after(response_id, -1)
        if events and events[-1].WhichOneof("event") in _TERMINAL_EVENTS:
            return
        snapshot = response_pb2.Response()
        snapshot.CopyFrom(response)
        event = Event(sequence_number=events[-1].sequence_number + 1 if events else 0)
        arm = "response_incomplete" if response.status == response_pb2.RESPONSE_STATUS_INCOMPLETE else (
            "response_completed" if response.status == response_pb2.RESPONSE_STATUS_COMPLETED else "response_failed")
        getattr(event, arm).response.CopyFrom(snapshot)
        await self._store.append_events(response_id, [event])

    async def _end(self, job: Job, response: response_pb2.Response, error: ApiError, *, first_sequence: int) -> None:
        """Fails the response with ``error``: an ``error`` event and ``response.failed`` end its stream."""
        engine = TurnEngine(response, first_sequence=first_sequence)
        events = engine.fail(error)
        await self._store.update_status(job.owner, job.response_id, engine.response)
        await self._store.append_events(job.response_id, events)
        await self._store.finish_job(job.id, job.worker_id)

    async def _watch(self, job: Job, cancel: asyncio.Event, lost: asyncio.Event) -> None:
        """Keeps the lease alive and notices a cancel request."""
        while True:
            if await self._store.cancel_requested(job.response_id):
                cancel.set()
            await asyncio.sleep(min(0.2, self._lease / 3))
            if not await self._store.heartbeat(job.id, job.worker_id, self._lease):
                # Another worker holds the job now: stop without writing (a cancel would save the response).
                lost.set()
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
