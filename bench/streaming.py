"""Relayed streaming throughput and added time to first event: direct upstream vs the edge (SSE), Envoy (SSE)
and gRPC StreamResponse.

    python -m bench.streaming [--streams 20] [--model fixed-2000] [--concurrency 4] [--client raw|httpx]

Starts the fake upstream and `switchboard serve` (service + edge + Envoy, no local model). The fake model
``fixed-N`` streams N content deltas of "tok " as fast as the upstream can write them, so the upstream is never
the bottleneck and the figures are those of the relay. For each path, after a warm-up:

* sequential streams (concurrency 1): delta events per second end to end (deltas / time from sending the
  request to the end of the stream), and the time to the first delta event: the first non-empty
  ``choices[0].delta.content`` chunk direct, the first ``response.output_text.delta`` event via the gateway;
* concurrent streams: aggregate delta events per second, and the CPU each process spent per 1000 deltas.

Every stream is checked: the deltas must concatenate to N times "tok " and the stream must end properly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import orjson
from httpx_sse import aconnect_sse

from bench.harness import API_KEY, Bench, CpuMeter, RawHttp, percentile, quiet_check, run_timed, start_bench
from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc

PROCESSES = ("client", "envoy", "edge", "service", "upstream")
AUTH = {"authorization": f"Bearer {API_KEY}"}
DELTA = "response.output_text.delta"


@dataclass
class Sample:
    first: float  # seconds from sending the request to the first delta
    total: float  # seconds from sending the request to the end of the stream
    deltas: int


# One stream: returns its Sample. Made per worker by a path's `open()`, which may hold a connection.
Stream = Callable[[], Awaitable[Sample]]


@dataclass
class Result:
    path: str
    samples: list[Sample] = field(default_factory=list)
    aggregate: float = 0.0  # deltas/s at concurrency
    cpu_per_k: dict[str, float] = field(default_factory=dict)  # at concurrency
    seq_cpu_per_k: dict[str, float] = field(default_factory=dict)  # sequential streams
    other: list[float] = field(default_factory=lambda: [0.0, 0.0])  # machine share outside our processes
    short: list[Sample] = field(default_factory=list)  # sequential streams of the short model

    def short_ttfe(self) -> float:
        return 1000 * percentile([s.first for s in self.short], 50) if self.short else float("nan")

    def rate(self) -> float:
        return statistics.median(s.deltas / s.total for s in self.samples)

    def ttfe(self, q: float = 50) -> float:
        return 1000 * percentile([s.first for s in self.samples], q)


class Checker:
    def __init__(self, name: str, expected: int) -> None:
        self.name, self.expected = name, expected

    def done(self, first: float | None, began: float, deltas: int, chars: int, ended: bool) -> Sample:
        if deltas != self.expected or chars != 4 * self.expected or not ended or first is None:
            raise RuntimeError(f"{self.name}: bad stream: {deltas} deltas, {chars} chars, ended={ended}")
        return Sample(first - began, time.perf_counter() - began, deltas)


def _events(buffer: bytearray) -> list[bytes]:
    """Splits complete SSE events (blank-line separated) off the front of ``buffer``."""
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return []
    events = bytes(buffer[:end]).split(b"\n\n")
    del buffer[:end + 2]
    return events


class Path:
    """An HTTP SSE path (direct or via the gateway) or the gRPC path; `open()` gives a per-worker stream()."""

    def __init__(self, name: str, base: str, route: str, body: bytes, headers: dict[str, str], direct: bool,
                 client: str, expected: int) -> None:
        self.name, self.base, self.route, self.body, self.headers = name, base, route, body, headers
        self.direct, self.client, self.check = direct, client, Checker(name, expected)
        self._http: httpx.AsyncClient | None = None
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    async def close(self) -> None:
        for closer in self._closers:
            await closer()
        self._closers.clear()

    async def open(self) -> Stream:
        return await (self._open_raw() if self.client == "raw" else self._open_httpx())

    # ---- the raw client: chunked decoding + SSE split by blank lines, data decoded with orjson

    async def _open_raw(self) -> Stream:
        conn = await RawHttp.connect(self.base)
        self._closers.append(conn.close)
        request = RawHttp.build(self.base, self.route, self.body, self.headers)
        direct, check, clock = self.direct, self.check, time.perf_counter

        async def stream() -> Sample:
            began = clock()
            status, head = await conn.head(request)
            if status != 200:
                raise RuntimeError(f"{check.name}: HTTP {status}")
            first: float | None = None
            deltas = chars = 0
            ended = False
            buffer = bytearray()
            async for piece in conn.body(head):
                buffer += piece
                for event in _events(buffer):
                    if direct:
                        if event == b"data: [DONE]":
                            ended = True
                            continue
                        choices = orjson.loads(event[6:])["choices"]
                        text = choices[0]["delta"].get("content") if choices else None
                        if text:
                            deltas += 1
                            chars += len(text)
                            if first is None:
                                first = clock()
                    elif event.startswith(b"event: response.output_text.delta\n"):
                        deltas += 1
                        chars += len(orjson.loads(event[event.index(b"\ndata: ") + 7:])["delta"])
                        if first is None:
                            first = clock()
                    elif event == b"data: [DONE]":
                        ended = True
                    elif event.startswith((b"event: response.failed", b"event: error")):
                        raise RuntimeError(f"{check.name}: {event[:300]!r}")
            return check.done(first, began, deltas, chars, ended)

        return stream

    # ---- httpx + httpx-sse

    async def _open_httpx(self) -> Stream:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=60.0, limits=httpx.Limits(max_connections=64))
            self._closers.append(self._http.aclose)
        client, url, body = self._http, self.base + self.route, self.body
        headers = {"content-type": "application/json", **self.headers}
        direct, check, clock = self.direct, self.check, time.perf_counter

        async def stream() -> Sample:
            began = clock()
            first: float | None = None
            deltas = chars = 0
            ended = False
            async with aconnect_sse(client, "POST", url, content=body, headers=headers) as source:
                if source.response.status_code != 200:
                    raise RuntimeError(f"{check.name}: HTTP {source.response.status_code}")
                async for sse in source.aiter_sse():
                    if sse.data == "[DONE]":
                        ended = True
                    elif direct:
                        choices = orjson.loads(sse.data)["choices"]
                        text = choices[0]["delta"].get("content") if choices else None
                        if text:
                            deltas += 1
                            chars += len(text)
                            if first is None:
                                first = clock()
                    elif sse.event == DELTA:
                        deltas += 1
                        chars += len(orjson.loads(sse.data)["delta"])
                        if first is None:
                            first = clock()
                    elif sse.event in ("response.failed", "error"):
                        raise RuntimeError(f"{check.name}: {sse.data[:300]}")
            return check.done(first, began, deltas, chars, ended)

        return stream


class GrpcPath(Path):
    def __init__(self, name: str, target: str, model: str, expected: int) -> None:
        super().__init__(name, "", "", b"", {}, False, "grpc", expected)
        self.target, self.rpc = target, None
        self.request = responses_service_pb2.CreateResponseRequest(
            model=f"fake/{model}", input=responses_service_pb2.Input(text="hello"))

    async def open(self) -> Stream:
        if self.rpc is None:
            channel = grpc.aio.insecure_channel(self.target)
            self._closers.append(channel.close)
            self.rpc = responses_service_pb2_grpc.ResponsesStub(channel)
        method, request, check, clock = self.rpc.StreamResponse, self.request, self.check, time.perf_counter
        metadata = (("authorization", f"Bearer {API_KEY}"),)

        async def stream() -> Sample:
            began = clock()
            first: float | None = None
            deltas = chars = 0
            ended = False
            async for event in method(request, metadata=metadata, timeout=120):
                arm = event.WhichOneof("event")
                if arm == "output_text_delta":
                    deltas += 1
                    chars += len(event.output_text_delta.delta)
                    if first is None:
                        first = clock()
                elif arm == "response_completed":
                    ended = True
                elif arm in ("response_failed", "error"):
                    raise RuntimeError(f"{check.name}: {event}")
            return check.done(first, began, deltas, chars, ended)

        return stream


def make_path(bench: Bench, name: str, model: str, client: str) -> Path:
    n = int(model.split("-", 1)[1])
    if name == "direct":
        body = orjson.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hello"}]})
        return Path("direct", bench.upstream, "/v1/chat/completions", body, {}, True, client, n)
    if name in ("edge", "envoy"):
        body = orjson.dumps({"model": f"fake/{model}", "input": "hello", "stream": True})
        return Path(name, bench.http if name == "edge" else bench.envoy, "/v1/responses", body, AUTH, False, client, n)
    target = bench.grpc if name == "grpc" else bench.envoy_grpc
    assert target is not None
    return GrpcPath(name, target, model, n)


def path_names(bench: Bench, args: argparse.Namespace) -> list[str]:
    names = ["direct", "edge", "envoy", "grpc"] + (["grpc-envoy"] if bench.envoy_grpc else [])
    return [n for n in names if not args.paths or n in args.paths]


async def measure_short(path: Path, args: argparse.Namespace, result: Result) -> None:
    """Time to the first delta on a short stream: the relay's set-up cost without the CPU contention of a
    2000-event burst that the upstream writes right behind the first delta (2 cores for all processes)."""
    stream = await path.open()
    for _ in range(args.warmup):
        await stream()
    for _ in range(args.short_streams):
        result.short.append(await stream())


async def measure(path: Path, bench: Bench, args: argparse.Namespace) -> Result:
    bench.reset_upstream()
    first = await path.open()
    for _ in range(args.warmup):
        await first()
    result = Result(path.name)
    with CpuMeter(bench.all_pids) as seq_meter:
        for _ in range(args.streams):
            result.samples.append(await first())
    seq_total = sum(s.deltas for s in result.samples)
    result.seq_cpu_per_k = {k: 1000 * v * 1000 / seq_total for k, v in seq_meter.used.items()}
    result.other[0] = seq_meter.other_share()
    if args.concurrency > 1:
        # Fresh connections: servers close keep-alive connections left idle for a few seconds (uvicorn: 5 s).
        streams = [await path.open() for _ in range(args.concurrency)]
        count = args.concurrent_streams
        remaining = count
        total = 0

        async def loop(stream: Stream) -> None:
            nonlocal remaining, total
            while remaining > 0:
                remaining -= 1
                total += (await stream()).deltas

        with CpuMeter(bench.all_pids) as meter:
            await asyncio.gather(*(loop(s) for s in streams))
        result.aggregate = total / meter.wall
        result.cpu_per_k = {k: 1000 * v * 1000 / total for k, v in meter.used.items()}
        result.other[1] = meter.other_share()
    return result


def _cpu_table(title: str, results: list[Result], attr: str, index: int) -> None:
    print(f"\nCPU ms per 1000 delta events {title}, per process (client = this load generator; other = other "
          f"processes' CPU, as % of {os.cpu_count()} cores)")
    print(f"{'path':<11} " + " ".join(f"{p:>8}" for p in PROCESSES) + f" {'total':>8} {'other':>6}")
    for r in results:
        cpu: dict[str, float] = getattr(r, attr)
        cells = " ".join(f"{cpu[p]:8.1f}" if cpu.get(p, 0) >= 0.05 else f"{'-':>8}" for p in PROCESSES)
        print(f"{r.path:<11} {cells} {sum(cpu.values()):8.1f} {100 * r.other[index]:5.0f}%")


def report(results: list[Result], args: argparse.Namespace) -> None:
    c = args.concurrency
    client = "raw keep-alive HTTP/1.1 + SSE split by lines" if args.client == "raw" else "httpx + httpx-sse"
    print(f"\nStreaming, model {args.model}; client: {client} (gRPC: grpc.aio rpc); {args.streams} sequential "
          f"streams per path" + (f", {args.concurrent_streams} at concurrency {c}" if c > 1 else "")
          + f"; TTFE short = first delta of {args.short_model} ({args.short_streams} streams)")
    print(f"{'path':<11} {'deltas/s':>9} {'min':>8} {'max':>8} {'TTFE p50':>9} {'TTFE max':>9} {'stream ms':>10}"
          f" {'TTFE short':>11}" + (f" {'agg/s @' + str(c):>10}" if c > 1 else ""))
    for r in results:
        rates = [s.deltas / s.total for s in r.samples]
        line = (f"{r.path:<11} {r.rate():9.0f} {min(rates):8.0f} {max(rates):8.0f} {r.ttfe():9.2f} {r.ttfe(100):9.2f}"
                f" {1000 * statistics.median(s.total for s in r.samples):10.1f} {r.short_ttfe():11.2f}")
        if c > 1:
            line += f" {r.aggregate:10.0f}"
        print(line)
    _cpu_table("in the sequential streams", results, "seq_cpu_per_k", 0)
    if c > 1:
        _cpu_table(f"at concurrency {c}", results, "cpu_per_k", 1)
    by = {r.path: r for r in results}
    direct = by.get("direct")
    if direct is None:
        return
    print(f"\nAdded time to first delta event vs direct (p50), {args.model} / {args.short_model}: "
          + ", ".join(f"{r.path} +{r.ttfe() - direct.ttfe():.2f} / +{r.short_ttfe() - direct.short_ttfe():.2f} ms"
                      for r in results if r.path != "direct"))
    for r in results:
        if r.path == "direct":
            continue
        rate_ok = "meets" if r.rate() >= 10_000 else "MISSES"
        added = r.ttfe() - direct.ttfe()
        short = r.short_ttfe() - direct.short_ttfe()
        print(f"Targets (issue 3) via {r.path}: {r.rate():.0f} deltas/s ({rate_ok} >= 10,000); first event "
              f"+{added:.2f} ms ({'meets' if added <= 1.5 else 'MISSES'} <= 1.5 ms), on a short stream "
              f"+{short:.2f} ms ({'meets' if short <= 1.5 else 'MISSES'})")


async def run(args: argparse.Namespace) -> None:
    warning = quiet_check()
    if warning:
        print(warning, flush=True)
    bench = start_bench()
    try:
        print(f"stack: upstream {bench.upstream}, edge {bench.http}, envoy {bench.envoy}, grpc {bench.grpc}, "
              f"grpc via envoy {bench.envoy_grpc}; pids {bench.pids}", flush=True)
        results: list[Result] = []
        for name in path_names(bench, args):
            path = make_path(bench, name, args.model, args.client)
            try:
                result = await measure(path, bench, args)
            finally:
                await path.close()
            if args.short_streams:
                path = make_path(bench, name, args.short_model, args.client)
                try:
                    await measure_short(path, args, result)
                finally:
                    await path.close()
            results.append(result)
            r = results[-1]
            print(f"  {r.path}: {r.rate():.0f} deltas/s per stream, first delta after {r.ttfe():.2f} ms (p50)"
                  + (f", {r.aggregate:.0f} deltas/s at concurrency {args.concurrency}" if r.aggregate else ""),
                  flush=True)
        report(results, args)
    except BaseException:
        print(f"--- end of the switchboard serve output:\n{bench.log_tail()}", file=sys.stderr)
        raise
    finally:
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="sequential streams per path")
    parser.add_argument("--model", default="fixed-2000", help="fake upstream model fixed-N (N deltas)")
    parser.add_argument("--concurrency", type=int, default=4, help="workers for the aggregate phase (1: skip it)")
    parser.add_argument("--concurrent-streams", type=int, default=20, help="streams per path in that phase")
    parser.add_argument("--short-model", default="fixed-5", help="fake model for the short-stream TTFE phase")
    parser.add_argument("--short-streams", type=int, default=50, help="streams of it per path (0: skip)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up streams per path")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="HTTP/SSE client: raw keep-alive HTTP/1.1 + line-split SSE (default), or httpx-sse")
    parser.add_argument("--paths", nargs="*", default=None, help="only these (direct edge envoy grpc grpc-envoy)")
    args = parser.parse_args(argv)
    for model in (args.model, args.short_model):
        if not model.startswith("fixed-") or not model[6:].isdigit():
            parser.error("--model and --short-model must be fixed-N")
    return run_timed(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
