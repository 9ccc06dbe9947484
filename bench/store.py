"""The cost of storing responses: added p50 latency of `store: true` over `store: false`, on SQLite and PostgreSQL.

    python -m bench.store [--requests 300] [--backends sqlite,postgresql]

For each backend it starts `switchboard service` alone (no edge: the store is the service's business, and the
fewer hops the clearer its cost) on a fresh database, with the fake upstream, then sends the same tiny unary
CreateResponse over gRPC, one at a time, alternating `store: true` and `store: false` so that drift hits both alike.
A stored response costs one transaction (the response row and its input items) before the reply.

PostgreSQL: the server at 127.0.0.1:5432 when it answers, else a throwaway cluster (see tests/pg.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import uvloop
import yaml

from bench.harness import percentile
from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.responses.v1 import responses_service_pb2_grpc
from tests import pg
from tests.e2e.stack import API_KEY, ROOT, free_port, start_upstream

AUTH = (("authorization", f"Bearer {API_KEY}"),)
WARMUP = 30


@contextmanager
def service(store: str, upstream: str, tmp: Path) -> Iterator[str]:
    """`switchboard service` on ``store``; yields its gRPC address. Its output goes to a file, not a pipe."""
    address = f"127.0.0.1:{free_port()}"
    config = {"server": {"grpc": address, "http": f"127.0.0.1:{free_port()}", "grace": 2},
              "auth": {"api_keys": [API_KEY]}, "store": store, "default_model": "fake/echo",
              "providers": [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"}]}
    path = tmp / "service.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "switchboard.cli.main", "service", "--config", str(path)],
                                   cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "gRPC service listening" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        yield address
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


async def measure(address: str, requests: int) -> dict[bool, list[float]]:
    """Latencies (seconds) of sequential unary calls, alternating store true and false."""
    timings: dict[bool, list[float]] = {True: [], False: []}
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = responses_service_pb2_grpc.ResponsesStub(channel)
        calls = {store: pb.CreateResponseRequest(model="fake/echo", input=pb.Input(text="hello"), store=store)
                 for store in (True, False)}
        for index in range(2 * (WARMUP + requests)):
            store = index % 2 == 0
            started = time.perf_counter()
            response = await rpc.CreateResponse(calls[store], metadata=AUTH, timeout=30)
            elapsed = time.perf_counter() - started
            assert response.store is store and response.output_text == "echo: hello"
            if index >= 2 * WARMUP:
                timings[store].append(elapsed)
    return timings


def report(name: str, timings: dict[bool, list[float]]) -> str:
    def ms(values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    stored, plain = timings[True], timings[False]
    added = ms(stored, 50) - ms(plain, 50)
    return (f"{name:<11} store:false p50 {ms(plain, 50):6.2f} ms  p99 {ms(plain, 99):6.2f} ms | "
            f"store:true p50 {ms(stored, 50):6.2f} ms  p99 {ms(stored, 99):6.2f} ms | "
            f"added p50 {added:+6.2f} ms ({len(stored)} requests each)")


def run(backends: list[str], requests: int) -> list[str]:
    upstream_process, upstream = start_upstream()
    lines: list[str] = []
    try:
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix="switchboard-bench-store-") as tmp:
                if backend == "sqlite":
                    with service(f"sqlite:///{Path(tmp) / 'store.db'}", upstream, Path(tmp)) as address:
                        lines.append(report("SQLite", uvloop.run(measure(address, requests))))
                else:
                    admin = pg.server_dsn()
                    dsn = pg.create_database(admin, "switchboard_bench")
                    try:
                        parts = psycopg.conninfo.conninfo_to_dict(dsn)
                        url = (f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
                               f"{parts.get('port', 5432)}/{parts['dbname']}")
                        with service(url, upstream, Path(tmp)) as address:
                            lines.append(report("PostgreSQL", uvloop.run(measure(address, requests))))
                    finally:
                        pg.drop_database(admin, dsn)
            print(lines[-1], flush=True)
    finally:
        upstream_process.stop()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per store setting")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgresql"}
    if unknown or not backends or args.requests < 1:
        parser.error(f"bad --backends or --requests: {sorted(unknown) or args.backends}")
    print(f"unary CreateResponse over gRPC to `switchboard service`, sequential, {args.requests} requests per "
          f"setting after {WARMUP} warm-up each", flush=True)
    run(backends, args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
