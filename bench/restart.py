"""How fast `switchboard serve` recovers from a child killed with SIGKILL: for the service, the edge and Envoy in
turn, the time from the kill to the first request that succeeds again through Envoy, over a few rounds
(0.25 s of it is the first restart backoff). Run: `python -m bench.restart [--rounds 3]`."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.e2e.stack import API_KEY, start_stack, start_upstream
from tests.e2e.test_supervisor import child_pid


def _answers(url: str) -> bool:
    # A fresh connection per try: a pooled one to the dead process would only fail.
    try:
        with httpx.Client(headers={"authorization": f"Bearer {API_KEY}"}) as client:
            return client.post(f"{url}/v1/responses", json={"input": "hi"}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream, url = start_upstream()
    try:
        with tempfile.TemporaryDirectory(prefix="sb-restart-") as tmp:
            stack = start_stack(Path(tmp), url, local_model=False)
            assert stack.envoy is not None
            try:
                for name in ("service", "edge", "Envoy"):
                    serving = []
                    for _ in range(args.rounds):
                        victim = child_pid(stack.process.pid, name)
                        os.kill(victim, signal.SIGKILL)
                        killed = time.monotonic()
                        while not _answers(stack.envoy):
                            time.sleep(0.01)
                        serving.append(time.monotonic() - killed)
                        stack.process.wait_for(f"the {name} is back", timeout=60)
                    print(f"{name:8s} kill -9 -> requests through Envoy succeed again: median "
                          f"{statistics.median(serving):.2f} s, max {max(serving):.2f} s")
            finally:
                stack.stop()
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
