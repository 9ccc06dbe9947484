"""Process-level pieces the processes share: dying with the parent, the open-files limit, and the readiness line
`serve` waits for."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys

# The line an edge process prints once it accepts connections; `switchboard serve` waits for it.
EDGE_READY = "HTTP edge process ready"


def raise_open_files_limit() -> int:
    """Raises this process's soft limit of open files to its hard limit (a 1024 soft limit is common): every
    concurrent stream holds a socket to its client or upstream. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Delivers ``sig`` to this process when ``parent`` exits; exits at once when it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        raise SystemExit(f"switchboard: the parent process {parent} is gone; not starting")
