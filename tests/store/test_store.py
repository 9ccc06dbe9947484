"""One suite for both stores: every test that takes ``store`` runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3

import psycopg
import pytest
from google.protobuf import struct_pb2

from switchboard.responses.v1 import content_pb2, items_pb2, response_pb2
from switchboard.service.store import migrations, open_store
from switchboard.service.store.base import CreateResponseRequest, Item, Response, Store, StreamEvent
from switchboard.service.store.postgres import PostgresStore
from switchboard.service.store.retention import run_retention
from switchboard.service.store.sqlite import SQLiteStore
from tests.store.conftest import Databases, StoreFactory, open_backend

A, B = "key_a", "key_b"
COMPLETED = response_pb2.RESPONSE_STATUS_COMPLETED
IN_PROGRESS = response_pb2.RESPONSE_STATUS_IN_PROGRESS


def user(id: str, text: str) -> Item:
    content = content_pb2.Content(text=text)
    return Item(message=items_pb2.Message(id=id, role=items_pb2.MESSAGE_ROLE_USER, content=content))


def response(id: str, *, prev: str | None = None, status: int = COMPLETED, created_at: int = 1_700_000_000) -> Response:
    resp = Response(id=id, object="response", created_at=created_at, status=status, model="p/m")  # type: ignore[arg-type]
    if prev is not None:
        resp.previous_response_id = prev
    resp.output.add().reasoning.CopyFrom(
        items_pb2.ReasoningItem(
            id=f"rs_{id}",
            summary=[content_pb2.ContentPart(summary_text=content_pb2.SummaryTextContent(text="thinking"))],
            encrypted_content="opaque==",
        )
    )
    resp.output.add().function_call.CopyFrom(
        items_pb2.FunctionCall(id=f"fc_{id}", call_id=f"call_{id}", name="get_weather", arguments='{"city":"Oslo"}')
    )
    text = content_pb2.ContentPart(output_text=content_pb2.OutputTextContent(text="sunny"))
    content = content_pb2.Content(parts=content_pb2.ContentList(parts=[text]))
    resp.output.add().message.CopyFrom(
        items_pb2.Message(id=f"msg_{id}", role=items_pb2.MESSAGE_ROLE_ASSISTANT, content=content)
    )
    resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens = 10, 5, 15
    resp.usage.output_tokens_details.reasoning_tokens = 3
    return resp


def request(prev: str | None = None) -> CreateResponseRequest:
    req = CreateResponseRequest(model="p/m", instructions="be brief", temperature=0.5, max_output_tokens=100)
    req.metadata["k"] = "v"
    if prev is not None:
        req.previous_response_id = prev
    return req


def tool_items(id: str) -> list[Item]:
    other = struct_pb2.Struct()
    other.update({"type": "web_search_call", "id": f"ws_{id}", "status": "completed"})
    return [
        user(f"msg_in_{id}", "weather?"),
        Item(function_call=items_pb2.FunctionCall(id=f"fc_in_{id}", call_id="c1", name="f", arguments="{}")),
        Item(
            function_call_output=items_pb2.FunctionCallOutput(
                id=f"fco_{id}", call_id="c1", output=content_pb2.Content(text='{"ok":true}')
            )
        ),
        Item(reasoning=items_pb2.ReasoningItem(id=f"rs_in_{id}", encrypted_content="enc")),
        Item(other=other),
        Item(item_reference=items_pb2.ItemReference(id=f"msg_{id}")),
    ]


async def save(store: Store, id: str, *, owner: str = A, prev: str | None = None, **kwargs: object) -> list[Item]:
    items = tool_items(id)
    await store.save_response(owner, response(id, prev=prev), request(prev), items, **kwargs)  # type: ignore[arg-type]
    return items


async def test_round_trip(store: Store) -> None:
    resp, req, items = response("resp_1", prev="resp_0"), request("resp_0"), tool_items("resp_1")
    await store.save_response(A, resp, req, items, expires_at=None)
    stored = await store.get_response(A, "resp_1")
    assert stored is not None
    assert stored.response == resp and stored.request == req and stored.input_items == items
    assert [i.WhichOneof("item") for i in stored.response.output] == ["reasoning", "function_call", "message"]
    assert stored.response.usage.total_tokens == 15
    assert await store.get_response(A, "resp_missing") is None


async def test_save_replaces_and_checks_ids(store: Store) -> None:
    await save(store, "resp_1", expires_at=None)
    newer = response("resp_1", status=IN_PROGRESS)
    await store.save_response(A, newer, request(), [user("msg_x", "hi")], expires_at=None)
    stored = await store.get_response(A, "resp_1")
    assert stored is not None and stored.response.status == IN_PROGRESS
    assert [i.message.id for i in stored.input_items] == ["msg_x"]
    no_id = Item(message=items_pb2.Message(role=items_pb2.MESSAGE_ROLE_USER, content=content_pb2.Content(text="x")))
    with pytest.raises(ValueError, match="input item 1 has no id"):
        await store.save_response(A, response("resp_2"), request(), [user("msg_y", "y"), no_id], expires_at=None)
    assert await store.get_response(A, "resp_2") is None


async def test_update_status(store: Store) -> None:
    await save(store, "resp_1", expires_at=None)
    done = response("resp_1")
    done.status = response_pb2.RESPONSE_STATUS_CANCELLED
    assert await store.update_status(A, "resp_1", done)
    stored = await store.get_response(A, "resp_1")
    assert stored is not None and stored.response == done
    assert not await store.update_status(B, "resp_1", response("resp_1"))
    assert not await store.update_status(A, "resp_missing", done)


async def test_owner_scoping(store: Store) -> None:
    items = await save(store, "resp_1", expires_at=None)
    await store.append_events("resp_1", [StreamEvent(sequence_number=0)])
    assert await store.get_response(B, "resp_1") is None
    assert await store.list_input_items(B, "resp_1", after=None, before=None, limit=10, order="asc") is None
    assert await store.chain(B, "resp_1") == []
    assert not await store.request_cancel(B, "resp_1")
    assert not await store.cancel_requested("resp_1")
    assert not await store.delete_response(B, "resp_1")
    with pytest.raises(ValueError, match="another owner"):
        await store.save_response(B, response("resp_1"), request(), [], expires_at=None)
    stored = await store.get_response(A, "resp_1")
    assert stored is not None and stored.input_items == items
    assert len(await store.events_after("resp_1", -1)) == 1


async def test_input_item_pagination(store: Store) -> None:
    items = [user(f"item_{n}", str(n)) for n in range(7)]
    await store.save_response(A, response("resp_1"), request(), items, expires_at=None)

    async def page(
        limit: int = 3, order: str = "asc", after: str | None = None, before: str | None = None
    ) -> tuple[list[int], bool]:
        got = await store.list_input_items(A, "resp_1", after=after, before=before, limit=limit, order=order)  # type: ignore[arg-type]
        assert got is not None
        ids = [int(i.message.id.split("_")[1]) for i in got.items]
        assert (got.first_id, got.last_id) == ((f"item_{ids[0]}", f"item_{ids[-1]}") if ids else (None, None))
        return ids, got.has_more

    assert await page() == ([0, 1, 2], True)
    assert await page(after="item_2") == ([3, 4, 5], True)
    assert await page(after="item_5") == ([6], False)
    assert await page(after="item_6") == ([], False)
    assert await page(limit=7) == ([0, 1, 2, 3, 4, 5, 6], False)
    assert await page(order="desc") == ([6, 5, 4], True)
    assert await page(order="desc", after="item_4") == ([3, 2, 1], True)
    assert await page(order="desc", after="item_1") == ([0], False)
    assert await page(limit=2, before="item_4") == ([2, 3], True)
    assert await page(limit=5, before="item_2") == ([0, 1], False)
    assert await page(limit=2, order="desc", before="item_2") == ([4, 3], True)
    assert await page(limit=9, order="desc", before="item_4") == ([6, 5], False)
    assert await page(limit=10, after="item_1", before="item_5") == ([2, 3, 4], False)
    assert await page(limit=2, order="desc", after="item_5", before="item_1") == ([4, 3], True)
    with pytest.raises(ValueError, match="after"):
        await page(after="item_missing")
    with pytest.raises(ValueError, match="limit"):
        await page(limit=0)
    await store.save_response(A, response("resp_empty"), request(), [], expires_at=None)
    empty = await store.list_input_items(A, "resp_empty", after=None, before=None, limit=5, order="desc")
    assert empty is not None and (empty.items, empty.first_id, empty.last_id, empty.has_more) == ([], None, None, False)
    assert await store.list_input_items(A, "resp_missing", after=None, before=None, limit=5, order="asc") is None


async def test_chain(store: Store) -> None:
    await save(store, "resp_1", expires_at=None)
    await save(store, "resp_2", prev="resp_1", expires_at=None)
    await save(store, "resp_3", prev="resp_2", expires_at=None)
    await save(store, "resp_b", prev="resp_3", owner=B, expires_at=None)
    await save(store, "resp_a", prev="resp_b", expires_at=None)

    chain = await store.chain(A, "resp_3")
    assert [s.response.id for s in chain] == ["resp_1", "resp_2", "resp_3"]
    assert chain[1].input_items == tool_items("resp_2") and chain[1].request == request("resp_1")
    assert [s.response.id for s in await store.chain(A, "resp_1")] == ["resp_1"]
    assert [s.response.id for s in await store.chain(A, "resp_3", max_depth=2)] == ["resp_2", "resp_3"]
    assert await store.chain(A, "resp_missing") == []
    # Another owner's response breaks the chain: the lead sees a dangling previous_response_id.
    broken = await store.chain(A, "resp_a")
    assert [s.response.id for s in broken] == ["resp_a"] and broken[0].response.previous_response_id == "resp_b"
    assert await store.delete_response(A, "resp_1")
    chain = await store.chain(A, "resp_3")
    assert [s.response.id for s in chain] == ["resp_2", "resp_3"] and chain[0].response.previous_response_id


async def test_delete(store: Store) -> None:
    await save(store, "resp_1", expires_at=None, job_request=b"job")
    await save(store, "resp_2", expires_at=None)
    await store.append_events("resp_1", [StreamEvent(sequence_number=0)])
    assert await store.delete_response(A, "resp_1")
    assert await store.get_response(A, "resp_1") is None
    assert await store.list_input_items(A, "resp_1", after=None, before=None, limit=5, order="asc") is None
    assert await store.events_after("resp_1", -1) == []
    assert await store.claim("w", 30) is None
    assert not await store.delete_response(A, "resp_1")
    assert await store.get_response(A, "resp_2") is not None


async def test_jobs_claimed_exactly_once(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    ids = [f"resp_{n:02d}" for n in range(50)]
    for n, rid in enumerate(ids):
        await save(first, rid, expires_at=None)
        if n % 2:
            await first.enqueue(A, rid, rid.encode())
        else:  # enqueued with the response, in one transaction
            await save(first, rid, expires_at=None, job_request=rid.encode())
    await first.enqueue(A, ids[0], b"again")  # a no-op: the job exists
    claimed: list[tuple[str, str]] = []

    async def worker(store: Store, name: str) -> None:
        while (job := await store.claim(name, 30)) is not None:
            assert job.request == job.id.encode() and job.owner == A and job.response_id == job.id
            assert job.attempts == 1 and job.worker_id == name
            claimed.append((job.id, name))
            await asyncio.sleep(0)
            await store.finish_job(job.id, name)

    await asyncio.gather(*(worker(s, f"w{n}") for n, s in enumerate([first, second, first, second])))
    assert sorted(job for job, _ in claimed) == ids
    assert len({name for _, name in claimed}) > 1
    assert await first.claim("w", 30) is None


async def test_lease_expiry_and_reclaim(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    await save(first, "resp_1", expires_at=None, job_request=b"req")
    job = await first.claim("w1", 5)
    assert job is not None and (job.id, job.worker_id, job.attempts) == ("resp_1", "w1", 1)
    assert await second.claim("w2", 5) is None
    assert await first.heartbeat("resp_1", "w1", 0.2)  # the lease now ends 0.2 s from now
    await asyncio.sleep(0.3)
    again = await second.claim("w2", 30)
    assert again is not None and (again.worker_id, again.attempts) == ("w2", 2)
    assert not await first.heartbeat("resp_1", "w1", 30)
    await first.finish_job("resp_1", "w1")  # not the holder: no effect
    assert await second.heartbeat("resp_1", "w2", 30)
    await second.finish_job("resp_1", "w2")
    assert not await second.heartbeat("resp_1", "w2", 30)
    assert await first.claim("w1", 30) is None


async def test_fail_stale_jobs(store: Store) -> None:
    running = response("resp_1", status=IN_PROGRESS)
    await store.save_response(A, running, request(), [], expires_at=None, job_request=b"r1")
    await store.append_events("resp_1", [StreamEvent(sequence_number=n) for n in range(2)])
    await store.save_response(A, response("resp_2", status=IN_PROGRESS), request(), [], expires_at=None)
    await store.enqueue(A, "resp_2", b"r2")
    await store.save_response(A, response("resp_3", status=IN_PROGRESS), request(), [], expires_at=None)
    await store.enqueue(A, "resp_3", b"r3")  # stays queued: never failed

    for _ in range(2):
        for rid in ("resp_1", "resp_2"):
            assert await store.fail_stale_jobs(2) == []
            job = await store.claim("w", 0.4, max_attempts=2)
            assert job is not None and job.id == rid
        await asyncio.sleep(0.5)
    # resp_2 finished its response, but the worker died before finish_job.
    assert await store.update_status(A, "resp_2", response("resp_2"))
    job = await store.claim("w", 0.1, max_attempts=2)
    assert job is not None and job.id == "resp_3"  # the stale ones are not reclaimed any more
    assert await store.fail_stale_jobs(2) == ["resp_1", "resp_2"]
    assert await store.fail_stale_jobs(2) == []

    failed = await store.get_response(A, "resp_1")
    assert failed is not None and failed.response.status == response_pb2.RESPONSE_STATUS_FAILED
    assert failed.response.error.code == "server_error" and failed.response.output == running.output
    (event,) = await store.events_after("resp_1", 1)
    assert event.sequence_number == 2 and event.response_failed.response == failed.response
    done = await store.get_response(A, "resp_2")
    assert done is not None and done.response.status == COMPLETED
    assert await store.events_after("resp_2", -1) == []


async def test_cancel_flags(store: Store) -> None:
    await save(store, "resp_1", expires_at=None)
    await save(store, "resp_2", expires_at=None)
    assert not await store.cancel_requested("resp_1")
    assert await store.request_cancel(A, "resp_1")
    assert await store.request_cancel(A, "resp_1")
    assert await store.cancel_requested("resp_1")
    assert not await store.cancel_requested("resp_2")
    assert not await store.request_cancel(B, "resp_2")
    assert not await store.cancel_requested("resp_2")
    assert not await store.request_cancel(A, "resp_missing")
    assert not await store.cancel_requested("resp_missing")


async def test_cancel_queued_only_before_a_claim(store: Store) -> None:
    queued = response("resp_1", status=response_pb2.RESPONSE_STATUS_QUEUED)
    await store.save_response(A, queued, request(), [], expires_at=None, job_request=b"r1")
    await store.save_response(A, response("resp_2", status=response_pb2.RESPONSE_STATUS_QUEUED), request(), [],
                              expires_at=None, job_request=b"r2")
    cancelled = response("resp_1", status=response_pb2.RESPONSE_STATUS_CANCELLED)
    event = StreamEvent(sequence_number=2)
    event.response_failed.response.CopyFrom(cancelled)
    assert not await store.cancel_queued(B, "resp_1", cancelled, [event]), "another owner cannot cancel"
    assert await store.cancel_queued(A, "resp_1", cancelled, [event])
    stored = await store.get_response(A, "resp_1")
    assert stored is not None and stored.response.status == response_pb2.RESPONSE_STATUS_CANCELLED
    assert await store.events_after("resp_1", 1) == [event]
    # The job is gone: no worker will run it; the other job is still there to claim.
    job = await store.claim("w1", 30)
    assert job is not None and job.response_id == "resp_2"
    # Once claimed, a job is running: cancelling "while queued" no longer applies.
    assert not await store.cancel_queued(A, "resp_2", cancelled, [])
    assert await store.claim("w2", 30) is None


def text_event(n: int, text: str) -> StreamEvent:
    event = StreamEvent(sequence_number=n)
    event.output_text_delta.delta = text
    return event


async def test_events_persist_and_resume(stores: StoreFactory) -> None:
    writer, reader = await stores(), await stores()
    await save(writer, "resp_1", expires_at=None)
    await save(writer, "resp_2", expires_at=None)
    created = StreamEvent(sequence_number=0)
    created.response_created.response.CopyFrom(response("resp_1", status=IN_PROGRESS))
    events = [created] + [text_event(n, f"t{n}") for n in range(1, 5)]
    await writer.append_events("resp_1", events[:3])
    await writer.append_events("resp_1", events[3:])
    await writer.append_events("resp_2", [text_event(0, "other")])
    assert await reader.events_after("resp_1", -1) == events
    assert await reader.events_after("resp_1", 2) == events[3:]
    assert await reader.events_after("resp_1", 4) == []
    await writer.append_events("resp_1", [text_event(3, "replayed"), text_event(5, "t5")])
    assert [e.output_text_delta.delta for e in await reader.events_after("resp_1", 2)] == ["t3", "t4", "t5"]
    assert await reader.events_after("resp_2", -1) == [text_event(0, "other")]
    assert await reader.events_after("resp_missing", -1) == []


async def test_retention(store: Store) -> None:
    await save(store, "resp_old", expires_at=100.0, job_request=b"j")
    await store.append_events("resp_old", [StreamEvent(sequence_number=0)])
    await save(store, "resp_forever", expires_at=None)
    await save(store, "resp_later", expires_at=10_000.0)
    assert await store.delete_expired(50.0) == 0
    assert await store.delete_expired(500.0) == 1
    assert await store.get_response(A, "resp_old") is None
    assert await store.events_after("resp_old", -1) == [] and await store.claim("w", 30) is None
    assert await store.get_response(A, "resp_forever") is not None
    await store.save_response(A, response("resp_new", created_at=2_000_000_000), request(), [], expires_at=None)
    # A TTL by creation time reaches rows saved without an expiry.
    assert await store.delete_expired(500.0, created_before=1_800_000_000) == 2
    assert await store.get_response(A, "resp_new") is not None

    await store.save_response(A, response("resp_soon"), request(), [], expires_at=1.0)
    task = asyncio.create_task(run_retention(store, None, 0.02))
    for _ in range(200):
        if await store.get_response(A, "resp_soon") is None:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.get_response(A, "resp_soon") is None
    assert await store.get_response(A, "resp_new") is not None


def applied_versions(backend: str, target: str) -> list[int]:
    if backend == "sqlite":
        with sqlite3.connect(target) as conn:
            rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    else:
        with psycopg.connect(target) as pconn:
            rows = pconn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [row[0] for row in rows]


async def test_migrations_idempotent(backend: str, databases: Databases) -> None:
    expected = [version for version, _ in (migrations.SQLITE if backend == "sqlite" else migrations.POSTGRES)]
    target = databases.new()
    store = open_backend(backend, target)
    try:
        await store.migrate()
        await store.migrate()
        assert applied_versions(backend, target) == expected
        await save(store, "resp_1", expires_at=None)
        await store.migrate()
        assert await store.get_response(A, "resp_1") is not None
    finally:
        await store.close()

    # Replicas starting together on a fresh database.
    target = databases.new()
    replicas = [open_backend(backend, target) for _ in range(3)]
    try:
        await asyncio.gather(*(replica.migrate() for replica in replicas))
        assert applied_versions(backend, target) == expected
        await save(replicas[0], "resp_1", expires_at=None)
        assert await replicas[2].get_response(A, "resp_1") is not None
    finally:
        for replica in replicas:
            await replica.close()


async def test_open_store() -> None:
    memory = open_store("sqlite:///:memory:")
    assert isinstance(memory, SQLiteStore) and memory.path == ":memory:"
    try:
        await memory.migrate()
        await save(memory, "resp_1", expires_at=None)
        assert await memory.get_response(A, "resp_1") is not None
    finally:
        await memory.close()
    assert isinstance(open_store("sqlite:///./switchboard.db"), SQLiteStore)
    assert open_store("sqlite:////var/lib/sb.db").path == "/var/lib/sb.db"  # type: ignore[attr-defined]
    for url in ("postgresql://u@127.0.0.1:1/db", "postgres://u@127.0.0.1:1/db"):
        assert isinstance(open_store(url), PostgresStore)  # lazily connected: no I/O yet
    for bad in ("mysql://x", "sqlite://relative.db", "sqlite:///"):
        with pytest.raises(ValueError):
            open_store(bad)
