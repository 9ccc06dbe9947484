"""Batching of event streams between the service and the edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from switchboard.service.pipeline.streams import batches


async def _items(count: int, *, pause_every: int = 0, fail_at: int | None = None) -> AsyncIterator[int]:
    for index in range(count):
        if fail_at is not None and index == fail_at:
            raise ValueError("broken upstream")
        if pause_every and index % pause_every == 0:
            await asyncio.sleep(0.01)
        yield index


async def test_order_is_kept_and_nothing_is_lost() -> None:
    seen = [item async for batch in batches(_items(1000), limit=64) for item in batch]
    assert seen == list(range(1000))


async def test_a_busy_consumer_gets_larger_batches() -> None:
    sizes = []
    async for batch in batches(_items(500), limit=64):
        sizes.append(len(batch))
        await asyncio.sleep(0.005)  # a slow send
    assert max(sizes) > 1 and all(size <= 64 for size in sizes)


async def test_an_idle_consumer_gets_items_one_by_one() -> None:
    sizes = [len(batch) async for batch in batches(_items(5, pause_every=1))]
    assert sizes == [1, 1, 1, 1, 1]


async def test_the_first_flush_item_goes_out_with_what_came_before() -> None:
    first = [batch async for batch in batches(_items(1000), first_flush=lambda item: item == 3)][0]
    assert first == [0, 1, 2, 3]


async def test_errors_reach_the_consumer_after_the_items_before_them() -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="broken upstream"):
        async for batch in batches(_items(10, fail_at=7)):
            seen.extend(batch)
    assert seen == list(range(7))


async def test_closing_the_batches_closes_the_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for index in range(10_000):
                await asyncio.sleep(0.001)
                yield index
        finally:
            closed.set()

    stream = batches(source())
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed.is_set()
