"""`python -m switchboard.cli.lifeline PARENT_PID -- PROGRAM ARGS...`: ties a child to its parent, then becomes PROGRAM.

`switchboard serve` starts every child through this: it asks the kernel to SIGKILL the process when its parent dies
(PR_SET_PDEATHSIG survives exec, so it also covers Envoy, which is not ours to change), checks that the parent is
still the expected one (closing the race where the parent died before the request was made), puts the process in a
process group of its own (so the supervisor can stop it and anything it started in one call), and execs PROGRAM.
Doing this after the spawn keeps the parent's spawn a plain posix_spawn (no preexec hook, no setsid flag).
"""

from __future__ import annotations

import os
import sys

from switchboard.shared.process import die_with_parent


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
