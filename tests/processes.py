"""Every process the test suite starts is started through here, so that none outlives the run.

Each process gets a process group of its own and dies with the pytest process (``switchboard.cli.lifeline``: the kernel
SIGKILLs it when pytest exits, however pytest ends). ``kill_tree`` stops a process, its group and every descendant
(also those that made groups of their own, such as the children of `switchboard serve`); ``kill_all``, called at
session end and at exit, does that for everything still registered.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

_started: set[int] = set()
_lock = threading.Lock()
# Every process started from this one inherits this marker, so kill_all finds even those that escaped their group
# and were orphaned.
MARKER = "SWITCHBOARD_TEST_SESSION"
os.environ[MARKER] = str(os.getpid())


def launcher() -> list[str]:
    """The command prefix that ties a process to this one. Only from the main thread: the kernel's parent-death
    signal fires when the spawning *thread* ends."""
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        return []
    return [sys.executable, "-m", "switchboard.cli.lifeline", str(os.getpid()), "--"]


def track(pid: int) -> None:
    with _lock:
        _started.add(pid)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """The live descendants of ``pid`` (children first), from /proc."""
    if not Path("/proc").is_dir():
        return []
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def kill_tree(pid: int, *, grace: float = 0.0, known: list[int] | None = None) -> None:
    """SIGTERM (when ``grace`` > 0, waiting up to ``grace`` seconds), then SIGKILL, to ``pid``'s group and to every
    descendant and its group (``known``: descendants seen earlier, which may have been orphaned since). Never
    waits on a pipe."""
    family = [*(known or []), *descendants(pid)]
    if grace > 0:
        _signal(pid, signal.SIGTERM, group=True)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        family += [p for p in descendants(pid) if p not in family]
    for target in (pid, *family):
        with contextlib.suppress(OSError):
            pgid = os.getpgid(target)
            if pgid != os.getpgrp():
                _signal(pgid, signal.SIGKILL, group=True)
        _signal(target, signal.SIGKILL, group=False)
    with _lock:
        _started.discard(pid)


def marked() -> list[int]:
    """The live processes that carry this session's marker in their environment."""
    needle = f"{MARKER}={os.getpid()}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def kill_all() -> None:
    """Kills everything the suite started that is still running."""
    with _lock:
        pids = list(_started)
    for pid in pids:
        kill_tree(pid)
    for pid in marked():
        _signal(pid, signal.SIGKILL, group=False)


atexit.register(kill_all)
