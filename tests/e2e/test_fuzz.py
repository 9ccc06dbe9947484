"""Schema-driven fuzzing of POST /v1/responses on the running stack's edge: at least 2,000 generated bad requests
(rejected with a 4xx), no 5xx, no hang, and every 4xx carries the error JSON. The larger run is
`python -m bench.fuzz --requests 10000`."""

from __future__ import annotations

import time
from collections import Counter

import httpx
from hypothesis import HealthCheck, given, settings

from tests import fuzzing
from tests.e2e.stack import API_KEY, Stack

REQUESTS = 2600  # of which at least BAD are rejected with a 4xx (the rest were valid after all)
BAD = 2000
TIMEOUT = 10.0  # seconds per request: longer is a hang


def test_fuzz_the_edge(stack: Stack) -> None:
    statuses: Counter[int] = Counter()
    slowest = 0.0
    started = time.monotonic()
    with httpx.Client(base_url=stack.http, headers={"authorization": f"Bearer {API_KEY}",
                                                    "content-type": "application/json"}, timeout=TIMEOUT) as client:

        @settings(max_examples=REQUESTS, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(fuzzing.bodies)
        def send(body: bytes) -> None:
            nonlocal slowest
            begun = time.monotonic()
            try:
                reply = client.post("/v1/responses", content=body)
            except httpx.TimeoutException:
                raise AssertionError(f"hang (> {TIMEOUT:g} s) on {body[:500]!r}") from None
            slowest = max(slowest, time.monotonic() - begun)
            statuses[reply.status_code] += 1
            found = fuzzing.problem(reply.status_code, reply.content, reply.headers)
            assert found is None, f"{found}\nrequest body: {body[:1000]!r}"

        send()
    elapsed = time.monotonic() - started
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests in {elapsed:.1f} s, statuses {dict(sorted(statuses.items()))}, "
          f"slowest {slowest:.2f} s")
    rejected = sum(n for status, n in statuses.items() if 400 <= status < 500)
    assert total >= REQUESTS and rejected >= BAD, f"only {rejected} of {total} bodies were rejected"
