"""Feedback on long start-up work: each step logged when it starts and, with its duration, when it ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("switchboard")


@contextmanager
def step(what: str) -> Iterator[None]:
    """Logs ``what`` when it starts and how long it took when it ends."""
    log.info("%s ...", what)
    started = time.monotonic()
    yield
    log.info("%s: done in %.1fs", what, time.monotonic() - started)
