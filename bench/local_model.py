"""Does local generation slow the other providers down? And how fast is the local model through the gateway?

    python -m bench.local_model [--requests 40] [--model smollm2-135m-instruct] [--threads 2]

Starts the fake upstream and `switchboard serve` (edge + service, no Envoy) with one local model in its worker
process. Then, for a streamed `fake/echo` request, measures the time from sending it to its first text delta event
(p50/p99 over --requests sequential requests): first with the local model idle, then while the local model streams
answers back to back. The local model's tokens/s (output tokens over the time from its first to its last delta) are
measured through the gateway during the second phase.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.harness import percentile
from tests.e2e.stack import API_KEY, start_stack, start_upstream

HEADERS = {"authorization": f"Bearer {API_KEY}"}


def first_delta(client: httpx.Client, body: dict[str, object]) -> tuple[float, float, int]:
    """(seconds to the first text delta, seconds to the end, output tokens) of one streamed request."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta" and not first:
                first = time.perf_counter() - start
            elif event["type"] in ("response.completed", "response.incomplete"):
                tokens = event["response"]["usage"]["output_tokens"]
    return first, time.perf_counter() - start, tokens


def measure(client: httpx.Client, count: int) -> list[float]:
    body = {"model": "fake/echo", "input": "hello", "store": False}
    first_delta(client, body)  # warm the path up
    return [first_delta(client, body)[0] for _ in range(count)]


def report(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"  {name:28} p50 {percentile(ms, 50):7.2f} ms   p99 {percentile(ms, 99):7.2f} ms   (n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    upstream_process, upstream = start_upstream()
    tmp = tempfile.TemporaryDirectory(prefix="switchboard-bench-local-")
    providers = [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"},
                 {"name": "local", "kind": "llama-cpp", "n_threads": args.threads, "models": {args.model: None}}]
    stack = None
    try:
        stack = start_stack(Path(tmp.name), upstream, envoy=False, local_model=False, extra={"providers": providers})
        with httpx.Client(base_url=stack.http, headers=HEADERS, timeout=300) as client:
            print(f"first text delta of a streamed fake/echo request ({args.requests} sequential requests)")
            report("local model idle", measure(client, args.requests))

            stop = threading.Event()
            rates: list[float] = []

            def generate() -> None:
                body = {"model": f"local/{args.model}", "input": "Write a long story about a robot who paints.",
                        "max_output_tokens": 256, "temperature": 0, "store": False}
                with httpx.Client(base_url=stack.http, headers=HEADERS, timeout=300) as local:
                    while not stop.is_set():
                        first, total, tokens = first_delta(local, body)
                        if tokens > 1 and total > first:
                            rates.append((tokens - 1) / (total - first))

            thread = threading.Thread(target=generate, daemon=True)
            thread.start()
            time.sleep(2.0)  # let the local model get past its prompt and into decoding
            report("local model streaming", measure(client, args.requests))
            stop.set()
            thread.join(300)
            if rates:
                print(f"local/{args.model} through the gateway: {sum(rates) / len(rates):.1f} tokens/s "
                      f"({len(rates)} answers, {args.threads} threads)")
    finally:
        if stack is not None:
            stack.stop()
        upstream_process.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
