"""Group commit (service/store/batch.py) on SQLite and PostgreSQL: reads see the responses still queued for the
writer, writes to a queued response keep their order, and closing commits the queue.

The writer's commit window is a minute here, so a queued response is certainly not committed until a flush, a
dependent write or ``close()`` cuts the window short."""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.service.store.base import Save, Store
from switchboard.service.store.batch import GroupCommitStore
from tests.store.conftest import StoreFactory, open_backend
from tests.store.test_store import IN_PROGRESS, A, B, request, response, user

LONG = 60.0


@pytest.fixture
async def batched(stores: StoreFactory) -> GroupCommitStore:
    return GroupCommitStore(await stores(), window=LONG)


async def save(store: Store, id: str, *, prev: str | None = None, owner: str = A, items: int = 3) -> None:
    await store.save_response(owner, response(id, prev=prev), request(prev),
                              [user(f"in_{id}_{n}", f"text {n}") for n in range(items)], expires_at=None)


async def test_reads_see_the_queued_response(batched: GroupCommitStore) -> None:
    await save(batched, "resp_1", items=5)
    assert await batched.inner.get_response(A, "resp_1") is None  # still queued
    found = await batched.get_response(A, "resp_1")
    assert found is not None and found.response == response("resp_1")
    assert [i.message.id for i in found.input_items] == [f"in_resp_1_{n}" for n in range(5)]
    assert await batched.get_response(B, "resp_1") is None  # another owner's

    page = await batched.list_input_items(A, "resp_1", after="in_resp_1_1", before=None, limit=2, order="asc")
    assert page is not None and [i.message.id for i in page.items] == ["in_resp_1_2", "in_resp_1_3"]
    assert page.has_more and page.first_id == "in_resp_1_2" and page.last_id == "in_resp_1_3"
    page = await batched.list_input_items(A, "resp_1", after=None, before=None, limit=10, order="desc")
    assert page is not None and [i.message.id for i in page.items] == [f"in_resp_1_{n}" for n in range(4, -1, -1)]
    assert not page.has_more
    with pytest.raises(ValueError):
        await batched.list_input_items(A, "resp_1", after="nope", before=None, limit=2, order="asc")
    assert await batched.list_input_items(B, "resp_1", after=None, before=None, limit=2, order="asc") is None


async def test_chain_mixes_committed_and_queued(batched: GroupCommitStore) -> None:
    await save(batched.inner, "resp_1")
    await save(batched, "resp_2", prev="resp_1")
    await save(batched, "resp_3", prev="resp_2")
    chain = await batched.chain(A, "resp_3")
    assert [s.response.id for s in chain] == ["resp_1", "resp_2", "resp_3"]
    assert [s.response.id for s in await batched.chain(A, "resp_3", max_depth=2)] == ["resp_2", "resp_3"]
    assert await batched.inner.chain(A, "resp_3") == []
    assert await batched.chain(B, "resp_3") == []


async def test_writes_to_a_queued_response_wait_for_its_commit(batched: GroupCommitStore) -> None:
    await save(batched, "resp_1")
    await save(batched, "resp_2")
    running = response("resp_1", status=IN_PROGRESS)
    assert await batched.update_status(A, "resp_1", running)
    stored = await batched.inner.get_response(A, "resp_1")
    assert stored is not None and stored.response.status == IN_PROGRESS
    assert await batched.delete_response(A, "resp_2")
    assert await batched.inner.get_response(A, "resp_2") is None
    assert await batched.get_response(A, "resp_2") is None


async def test_background_and_job_saves_are_written_through(batched: GroupCommitStore) -> None:
    background = response("resp_bg")
    background.background = True
    await batched.save_response(A, background, request(), [], expires_at=None)
    assert await batched.inner.get_response(A, "resp_bg") is not None
    await batched.save_response(A, response("resp_job"), request(), [], expires_at=None, job_request=b"job")
    assert await batched.inner.get_response(A, "resp_job") is not None
    job = await batched.claim("w1", 10.0)
    assert job is not None and job.response_id == "resp_job"


async def test_another_owners_id_is_refused(batched: GroupCommitStore) -> None:
    await save(batched, "resp_1")
    with pytest.raises(ValueError):
        await save(batched, "resp_1", owner=B)
    with pytest.raises(ValueError):  # no item id: refused at once, not in the batch
        await batched.save_response(A, response("resp_2"), request(), [user("", "x")], expires_at=None)


async def test_close_commits_the_queue(backend: str, database: str, stores: StoreFactory) -> None:
    batched = GroupCommitStore(await stores(), window=LONG)
    for n in range(50):
        await save(batched, f"resp_{n}")
    await batched.close()
    reopened = open_backend(backend, database)
    try:
        for n in range(50):
            assert await reopened.get_response(A, f"resp_{n}") is not None
    finally:
        await reopened.close()


async def test_the_queue_is_bounded(stores: StoreFactory) -> None:
    batched = GroupCommitStore(await stores(), window=LONG, max_pending=4)
    for n in range(10):  # each fifth save waits for the writer to commit the four before it
        await save(batched, f"resp_{n}")
    committed = [n for n in range(10) if await batched.inner.get_response(A, f"resp_{n}") is not None]
    assert committed == list(range(8))
    await batched.flush()
    assert await batched.inner.get_response(A, "resp_9") is not None


class FailingOnce:
    """The real store, whose first batch transaction fails as a dropped connection would."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failures = 0

    async def save_responses(self, saves: list[Save]) -> list[str]:
        if not self.failures:
            self.failures += 1
            raise ConnectionError("connection dropped")
        return await self.inner.save_responses(saves)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_failed_batch_is_tried_again(stores: StoreFactory) -> None:
    inner = await stores()
    flaky = FailingOnce(inner)
    batched = GroupCommitStore(flaky, window=LONG)  # type: ignore[arg-type]
    await save(batched, "resp_1")
    await batched.flush()
    assert flaky.failures == 1
    assert await inner.get_response(A, "resp_1") is not None
