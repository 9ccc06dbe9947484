"""The test suite leaves nothing running: a pytest run that starts a fake upstream and a whole `switchboard serve`
stack, then is interrupted with SIGINT (Ctrl-C) or killed with SIGKILL, leaves none of those processes behind."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.stack import ROOT, Process
from tests.processes import alive, descendants

PROBE = '''
import os
import time
from pathlib import Path

from tests.e2e.stack import start_stack, start_upstream
from tests.processes import descendants


def test_probe(tmp_path: Path) -> None:
    _, url = start_upstream()
    start_stack(tmp_path / "stack", url, local_model=False)
    print("PIDS", *descendants(os.getpid()), flush=True)
    time.sleep(100)
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_an_interrupted_or_killed_run_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    run = Process([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "tests.conftest",
                   "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(probe)],
                  env={"PYTHONPATH": str(ROOT)}, name="inner pytest")
    try:
        pids = [int(p) for p in run.wait_for("PIDS", timeout=120).split()[1:]]
        # The upstream, serve, and serve's service (serving the edge too) and Envoy.
        assert len(pids) >= 4, pids
        assert all(alive(p) for p in pids)
        run.proc.send_signal(sig)
        run.proc.wait(30)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if alive(p)], "".join(run.output)[-3000:]
    finally:
        run.stop()


def test_stop_returns_while_a_grandchild_outside_the_group_holds_the_output_pipe() -> None:
    # `setsid` puts the grandchild in a session and group of its own, still holding the output pipe.
    run = Process(["sh", "-c", "setsid sleep 300 & echo started; exec sleep 300"], name="sh")
    run.wait_for("started", timeout=30)
    family = descendants(run.pid)
    assert family and all(alive(p) for p in family)
    run.stop()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in family if alive(p)]
