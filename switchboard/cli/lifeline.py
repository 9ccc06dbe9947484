"""`python -m switchboard.cli.lifeline PARENT_PID -- PROGRAM ARGS...`: ties a child to its parent, then becomes PROGRAM.

`switchboard serve` starts every child through this: it asks the kernel to SIGKILL the process when its parent dies
(PR_SET_PDEATHSIG survives exec, so it also covers Envoy, which is not ours to change), checks that the parent is
still the expected one (closing the race where the parent died before the request was made), puts the process in a
process group of its own (so the supervisor can stop it and anything it started in one call), and execs PROGRAM.
Doing this after the spawn keeps the parent's spawn a plain posix_spawn (no preexec hook, no setsid flag).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Delivers ``sig`` to this process when ``parent`` exits; exits at once when it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        raise SystemExit(f"switchboard: the parent process {parent} is gone; not starting")


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        raise SystemExit("usage: python -m switchboard.cli.lifeline PARENT_PID -- PROGRAM [ARGS...]")
    die_with_parent(int(argv[0]))
    if os.getpgrp() != os.getpid() and os.getsid(0) != os.getpid():  # a session leader already leads its group
        os.setpgid(0, 0)
    program = argv[2:]
    os.execvp(program[0], program)


if __name__ == "__main__":
    main(sys.argv[1:])
