"""Batching a stream: each batch holds what the producer made while the consumer was busy sending."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")
_YIELD_EVERY = 128


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def batches(source: AsyncIterator[T], limit: int = 256,
                  first_flush: Callable[[T], bool] | None = None) -> AsyncIterator[list[T]]:
    """Runs ``source`` in its own task and yields lists of its items: a busy consumer gets everything that
    piled up meanwhile (fewer, larger messages). The first item that ``first_flush`` accepts (the first
    output delta) is handed over at once, with everything before it, instead of waiting for the producer to
    finish a whole upstream chunk."""
    queue: asyncio.Queue[T | _End] = asyncio.Queue()

    async def pump() -> None:
        waiting_for_first = first_flush is not None
        count = 0
        try:
            async for item in source:
                queue.put_nowait(item)
                count += 1
                if waiting_for_first and first_flush is not None and first_flush(item):
                    waiting_for_first = False
                    await asyncio.sleep(0)
                elif count % _YIELD_EVERY == 0:
                    # An upstream chunk can hold hundreds of deltas that need no I/O to process: let the
                    # consumer send what is ready instead of waiting for the whole chunk.
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
