"""Feedback on long start-up work: timed steps and the progress of a file being written, as log lines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("switchboard")


@contextmanager
def step(what: str) -> Iterator[None]:
    """Logs ``what`` when it starts and how long it took when it ends."""
    log.info("%s ...", what)
    started = time.monotonic()
    yield
    log.info("%s: done in %.1fs", what, time.monotonic() - started)


@contextmanager
def file_growth(path: Path, total: int, what: str, every: float = 1.0) -> Iterator[None]:
    """Logs how far ``path`` has grown towards ``total`` bytes, every ``every`` seconds, while the block runs."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            percent = 100 * size / total if total else 0
            log.info("%s: %3.0f%% (%d of %d MB)", what, min(percent, 100), size >> 20, total >> 20)

    watcher = threading.Thread(target=report, name="progress", daemon=True)
    with step(what):
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
