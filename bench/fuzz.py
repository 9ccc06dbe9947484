"""The large fuzz run: the generator of tests/fuzzing.py against a stack of its own, for N requests.

    python -m bench.fuzz --requests 10000 [--seed 1] [--url http://127.0.0.1:8080]

Prints the counts by status, the 5xx count, hangs, malformed 4xx bodies (with the first bodies that caused them)
and the latency; exits 1 on any 5xx, hang or malformed error body.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, seed, settings

from tests import fuzzing
from tests.e2e.stack import API_KEY, start_stack, start_upstream

TIMEOUT = 10.0


def run(url: str, requests: int, random_seed: int | None, show: int) -> int:
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    unusual: dict[int, tuple[bytes, bytes]] = {}  # the first reply of each status other than 200, 400 and 404
    problems: list[tuple[str, bytes]] = []
    hangs: list[bytes] = []
    latencies: list[float] = []
    previous = [b""]
    started = time.monotonic()
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
                      timeout=TIMEOUT) as client:

        @settings(max_examples=requests, deadline=None, derandomize=random_seed is None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(fuzzing.bodies)
        def send(body: bytes) -> None:
            begun = time.monotonic()
            try:
                reply = client.post("/v1/responses", content=body)
            except httpx.TimeoutException:
                hangs.append(body)
                return
            except httpx.TransportError as exc:  # the server dropped the connection, maybe after the last body
                statuses[0] += 1
                problems.append((f"connection error {exc!r} (previous body {previous[0][:300]!r})", body))
                return
            finally:
                previous[0] = body
            latencies.append(time.monotonic() - begun)
            statuses[reply.status_code] += 1
            found = fuzzing.problem(reply.status_code, reply.content, reply.headers)
            if found is not None:
                problems.append((found, body))
            elif reply.status_code >= 400:
                codes[str(reply.json()["error"]["code"])] += 1
            if reply.status_code not in (200, 400, 404):
                unusual.setdefault(reply.status_code, (body, reply.content))
            if len(latencies) % 1000 == 0:
                print(f"  {len(latencies)} requests, {time.monotonic() - started:.0f} s", flush=True)

        if random_seed is not None:
            send = seed(random_seed)(send)
        send()
    elapsed = time.monotonic() - started
    total = sum(statuses.values()) + len(hangs)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    latencies.sort()
    print(f"requests: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s)")
    print(f"statuses: {dict(sorted(statuses.items()))}")
    print(f"5xx: {server_errors}  hangs: {len(hangs)}  bad error bodies: {len(problems) - server_errors}")
    if latencies:
        p99 = latencies[int(len(latencies) * 0.99)]
        print(f"latency: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
    print("error codes: " + ", ".join(f"{code} {n}" for code, n in codes.most_common(20)))
    for status, (body, content) in sorted(unusual.items()):
        print(f"first {status}: {content[:300]!r}\n    for body {body[:300]!r}")
    kinds: Counter[str] = Counter(found.split(":")[0] for found, _ in problems)
    for kind, count in kinds.most_common():
        print(f"  {count} x {kind}")
    for found, body in sorted(problems, key=lambda p: len(p[1]))[:show]:
        print(f"--- {found}\n    shortest body: {body[:400]!r}")
    for body in hangs[:show]:
        print(f"--- hang: {body[:400]!r}")
    return 1 if problems or hangs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized)")
    parser.add_argument("--url", default=None, help="an edge already running (default: start a stack)")
    parser.add_argument("--show", type=int, default=5, help="how many failing bodies to print")
    args = parser.parse_args()
    if args.url:
        return run(args.url, args.requests, args.seed, args.show)
    upstream, upstream_url = start_upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stack = start_stack(Path(tmp), upstream_url, envoy=False, local_model=False)
            try:
                return run(stack.http, args.requests, args.seed, args.show)
            finally:
                stack.stop()
    finally:
        upstream.stop()


if __name__ == "__main__":
    sys.exit(main())
