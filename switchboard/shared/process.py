"""Process-level pieces every server process shares: its open-files limit and the readiness line `serve` waits for."""

from __future__ import annotations

import contextlib
import resource

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
