"""The retention task: deletes expired stored responses every ``interval`` seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from switchboard.service.store.base import Store

log = logging.getLogger(__name__)


async def sweep(store: Store, ttl_seconds: float | None, now: float) -> int:
    """One pass: rows past their own ``expires_at``, and with a TTL, rows created more than ``ttl_seconds`` ago
    (so a TTL configured later also reaches rows saved without one)."""
    created_before = now - ttl_seconds if ttl_seconds is not None else None
    return await store.delete_expired(now, created_before=created_before)


async def run_retention(
    store: Store,
    ttl_seconds: float | None,
    interval: float,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run until cancelled; a failed pass is logged and retried at the next interval."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    while True:
        try:
            deleted = await sweep(store, ttl_seconds, clock())
            if deleted:
                log.info("retention: deleted %d expired responses", deleted)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention: the cleanup pass failed")
        await asyncio.sleep(interval)
