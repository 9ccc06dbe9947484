"""The garbage collector's settings for a serving process, and giving memory back after a burst.

Collections: the cyclic collector runs a young-generation pass every 700 allocations by default, and every so often
a full pass over every object of the process: over the ~150,000 objects that imports and start-up leave, that
cost a fifth of the throughput and pauses of up to 100 ms (p99 at concurrency 16: 107 ms; with the collector off:
10 ms). :func:`settle_after_startup` moves what start-up made into the permanent generation
(``gc.freeze``: never scanned again), so full passes only walk what serving made (p99 at concurrency 16: 13-20 ms,
and 20-25% more requests per second). Larger young generations (5,000 or 50,000 allocations between passes)
measured no better: fewer but longer pauses. Cycles are still collected as before.

A burst of thousands of concurrent streams grows the heap by a hundred megabytes or more. When it is over, the
objects are freed, but the memory is not returned: pymalloc cannot release an arena while any block in it lives
(a few survivors pin most of them), and glibc's malloc keeps free pages mapped. So `serve` runs its Python
children with ``PYTHONMALLOC=malloc`` (switchboard/cli/supervisor.py), and :func:`trim_periodically` runs a full
collection and asks malloc to return free pages (``malloc_trim(0)``, which also releases free pages inside the
heap) whenever the resident size stands well above its lowest level. It does nothing where there is no glibc
(musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def settle_after_startup() -> None:
    """Moves what start-up allocated out of the collector's way (call once the process is ready to serve)."""
    gc.collect()
    gc.freeze()


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def trim_periodically(interval: float = 2.0, slack: int = 16 << 20) -> None:
    """Trims malloc's free pages when the resident size stands more than ``slack`` bytes above its lowest level,
    checking every ``interval`` seconds. A trim that gives little back (the memory is in use: a burst is still
    running) makes the next one wait longer, up to 4 intervals. Runs until cancelled."""
    trim = malloc_trim()
    floor = resident_bytes()
    if trim is None or not floor:
        return
    wait = interval
    while True:
        await asyncio.sleep(wait)
        resident = resident_bytes()
        if resident <= floor + slack:
            floor = min(floor, resident)
            wait = interval
            continue
        gc.collect()  # what only a full pass frees (finished tasks and frames in cycles), then its pages
        trim()
        after = resident_bytes()
        log.debug("malloc_trim: %d -> %d MB resident", resident >> 20, after >> 20)
        wait = interval if resident - after >= slack // 2 else min(wait * 2, 4 * interval)
