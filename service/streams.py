"""Batching a stream: each batch holds what the producer made while the consumer was busy sending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def batches(source: AsyncIterator[T], limit: int = 256) -> AsyncIterator[list[T]]:
    """Runs ``source`` in its own task and yields lists of its items: an idle consumer gets each item at
    once (no added latency), a busy one gets everything that piled up meanwhile (fewer, larger messages)."""
    queue: asyncio.Queue[T | _End] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
                if queue.qsize() == 1:
                    # The consumer is waiting: let it send this at once instead of after a whole upstream chunk.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the consumer, which re-raises it
            queue.put_nowait(_End(error))
            return
        queue.put_nowait(_End(None))

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            batch: list[T] = []
            end: _End | None = None
            while True:
                if isinstance(item, _End):
                    end = item
                    break
                batch.append(item)
                if len(batch) >= limit or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                yield batch
            if end is not None:
                if end.error is not None:
                    raise end.error
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
