"""`switchboard serve` as a supervisor: it restarts a child killed with SIGKILL, gives up (exit 1, naming the child)
on one that keeps dying, takes every child with it when it is SIGKILLed itself, and stops everything on SIGTERM;
with the edge inside the service's process (the default) and as processes of its own (`server.edge: separate`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import API_KEY, Stack, start_stack
from tests.processes import alive, descendants

AUTH = {"authorization": f"Bearer {API_KEY}"}
CHILDREN = {"service": "switchboard.cli.main service", "edge": "switchboard.cli.main edge", "Envoy": "envoy"}


def child_pid(serve: int, name: str) -> int:
    """The pid of serve's child ``name``, found by its command line among serve's direct children."""
    for pid in descendants(serve):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == serve and alive(pid) and CHILDREN[name] in cmdline and "switchboard.cli.lifeline" not in cmdline:
            return pid
    raise AssertionError(f"serve has no {name} child")


def answers(url: str) -> bool:
    try:
        reply = httpx.post(f"{url}/v1/responses", json={"input": "still there?"}, headers=AUTH, timeout=10)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and reply.json()["output"][0]["content"][0]["text"] == "echo: still there?"


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(what)


def children(stack: Stack) -> list[str]:
    """serve's children for the stack's `server.edge`."""
    return ["service", "Envoy"] if stack.edge_mode == "in-process" else ["service", "edge", "Envoy"]


@pytest.fixture(params=["in-process", "separate"])
def served(request: pytest.FixtureRequest, tmp_path: Path, upstream: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path, upstream, local_model=False, server={"edge": request.param})
    yield stack
    stack.stop()


def test_serve_restarts_each_child_killed_with_sigkill(served: Stack) -> None:
    assert served.envoy is not None
    serve = served.process.pid
    assert answers(served.envoy)
    for name in children(served):
        victim = child_pid(serve, name)
        os.kill(victim, signal.SIGKILL)
        served.process.wait_for(f"the {name} (pid {victim}) was killed by signal 9 (SIGKILL); restarting it",
                                timeout=10)
        served.process.wait_for(f"the {name} is back", timeout=60)
        assert child_pid(serve, name) != victim
        wait_until(lambda: answers(served.envoy) and answers(served.http), 30,
                   f"requests did not succeed again after the {name} was restarted")
    assert served.process.proc.poll() is None


@pytest.mark.parametrize("mode, name", [("in-process", "service"), ("separate", "edge")])
def test_serve_gives_up_on_a_child_that_keeps_dying(tmp_path: Path, upstream: str, mode: str, name: str) -> None:
    stack = start_stack(tmp_path, upstream, local_model=False,
                        server={"restart_limit": 2, "restart_window": 600, "edge": mode})
    try:
        serve = stack.process.pid
        family = descendants(serve)
        victims = []
        for round_ in range(3):
            victim = child_pid(serve, name)
            victims.append(victim)
            os.kill(victim, signal.SIGKILL)
            if round_ < 2:
                stack.process.wait_for(f"the {name} is back", timeout=60)
        code = stack.process.proc.wait(30)
        family += [p for p in victims if p not in family]
        output = "".join(stack.process.output)
    finally:
        stack.stop()
    assert code == 1, output[-3000:]
    assert (f"the {name} (pid {victims[-1]}) was killed by signal 9 (SIGKILL); it was restarted 2 times within 600 s, "
            "giving up") in output
    wait_until(lambda: not any(alive(p) for p in family), 10, "serve left children behind when it gave up")


def test_no_child_outlives_serve_killed_with_sigkill(served: Stack) -> None:
    serve = served.process.pid
    family = descendants(serve)
    assert {child_pid(serve, name) for name in children(served)} <= set(family)
    served.process.proc.send_signal(signal.SIGKILL)
    served.process.proc.wait(5)
    wait_until(lambda: not any(alive(p) for p in family), 2.0,
               f"orphans 2 s after serve was killed: {[p for p in family if alive(p)]}")


def test_sigterm_stops_everything_within_the_grace_period(served: Stack) -> None:
    serve = served.process.pid
    family = descendants(serve)
    grace = 5.0  # tests/e2e/stack.py writes server.grace: 5
    served.process.proc.send_signal(signal.SIGTERM)
    assert served.process.proc.wait(grace) == 0
    wait_until(lambda: not any(alive(p) for p in family), 1.0,
               f"still running after SIGTERM: {[p for p in family if alive(p)]}")


def test_the_python_children_allocate_with_malloc(served: Stack) -> None:
    # Memory comes back after bursts only with malloc (switchboard/shared/memory.py).
    for name in children(served):
        if name != "Envoy":
            environ = Path(f"/proc/{child_pid(served.process.pid, name)}/environ").read_bytes().split(b"\0")
            assert b"PYTHONMALLOC=malloc" in environ, name
