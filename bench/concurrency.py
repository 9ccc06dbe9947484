"""Concurrency at scale: many slow SSE streams at once, then many idle keep-alive connections, with the memory of
every process before, during and after.

    python -m bench.concurrency [--streams 2000] [--model drip-12-200] [--path edge|envoy|direct]
                                [--idle 10000] [--set KEY=YAML ...]

Starts the fake upstream and `switchboard serve` (as bench.latency does). The fake model ``drip-N-MS`` streams N
deltas with every upstream chunk MS ms after the one before (``drip-12-200``: 15 chunks, about 2.8 s).

1. One stream alone: its duration is the yardstick.
2. ``--streams`` streams opened at once, each on its own connection: per stream the HTTP status, whether it ended
   with a terminal event and ``[DONE]`` (errors are counted by kind), and its duration (p50/p99/max, as a multiple
   of the stream alone). The RSS of every process is sampled every 0.25 s: before, the peak during, and after
   (``--settle`` seconds after the last stream ended).
3. ``--idle`` connections to the path, each sends one ``GET /healthz`` and then stays idle (keep-alive): how many
   the server kept open, the RSS of every process with them open, and the time a fresh request takes meanwhile.

Bounded: every stream and connection has a deadline (``--timeout``); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.harness import (
    API_KEY,
    Bench,
    CpuMeter,
    RawHttp,
    parse_settings,
    percentile,
    quiet_check,
    run_timed,
    start_bench,
)

PROCESSES = ("envoy", "edge", "service", "upstream")
AUTH = {"authorization": f"Bearer {API_KEY}"}


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


@dataclass
class Memory:
    pids: dict[str, list[int]]
    before: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        return {name: sum(rss_mb(pid) for pid in pids) for name, pids in self.pids.items()}

    async def watch(self) -> None:
        while True:
            for name, value in self.sample().items():
                self.peak[name] = max(self.peak.get(name, 0.0), value)
            await asyncio.sleep(0.25)


@dataclass
class Outcome:
    status: int
    seconds: float
    error: str | None


def targets(bench: Bench, path: str, model: str) -> tuple[str, str, bytes]:
    """(base url, request path, body) of one stream on ``path``."""
    if path == "direct":
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        return bench.upstream, "/v1/chat/completions", orjson.dumps(body)
    base = bench.envoy if path == "envoy" else bench.http
    return base, "/v1/responses", orjson.dumps({"model": f"fake/{model}", "input": "hello", "stream": True})


async def one_stream(url: str, request: bytes, direct: bool, timeout: float) -> Outcome:
    began = time.perf_counter()
    conn: RawHttp | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await RawHttp.connect(url)
            status, head = await conn.head(request)
            body = b"".join([chunk async for chunk in conn.body(head)])
        seconds = time.perf_counter() - began
        if status != 200:
            return Outcome(status, seconds, f"HTTP {status}")
        if not body.rstrip().endswith(b"data: [DONE]"):
            return Outcome(status, seconds, "no [DONE]")
        if not direct and b"event: response.completed" not in body:
            return Outcome(status, seconds, "no response.completed")
        return Outcome(status, seconds, None)
    except TimeoutError:
        return Outcome(0, time.perf_counter() - began, "client timeout")
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return Outcome(0, time.perf_counter() - began, type(exc).__name__)
    finally:
        if conn is not None:
            conn.writer.close()


async def streams(bench: Bench, args: argparse.Namespace) -> None:
    url, route, body = targets(bench, args.path, args.model)
    request = RawHttp.build(url, route, body, None if args.path == "direct" else AUTH)
    direct = args.path == "direct"
    alone = await one_stream(url, request, direct, args.timeout)
    if alone.error:
        raise RuntimeError(f"a stream alone failed: {alone.error}")
    await asyncio.sleep(1.0)
    memory = Memory(bench.all_pids)
    memory.before = memory.sample()
    watcher = asyncio.create_task(memory.watch())
    with CpuMeter(bench.all_pids) as meter:
        began = time.perf_counter()
        outcomes = await asyncio.gather(*(one_stream(url, request, direct, args.timeout)
                                          for _ in range(args.streams)))
        wall = time.perf_counter() - began
    await asyncio.sleep(args.settle)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    memory.after = memory.sample()
    ok = [o.seconds for o in outcomes if o.error is None]
    errors = collections.Counter(o.error for o in outcomes if o.error is not None)
    print(f"\n{args.streams} concurrent streams of {args.model} on path {args.path}; one alone took "
          f"{alone.seconds:.2f} s; all done in {wall:.1f} s")
    failed = [o.seconds for o in outcomes if o.error is not None]
    print(f"  ok {len(ok)}, errors {sum(errors.values())}" + (f" {dict(errors)}, after {min(failed):.1f}-"
                                                               f"{max(failed):.1f} s" if errors else ""))
    if ok:
        print(f"  stream time p50 {percentile(ok, 50):.2f} s, p99 {percentile(ok, 99):.2f} s, max {max(ok):.2f} s "
              f"({max(ok) / alone.seconds:.1f}x alone)")
    cpu = meter.per_request_ms(args.streams)
    print("  CPU ms per stream: " + ", ".join(f"{p} {cpu.get(p, 0):.2f}" for p in ("client", *PROCESSES))
          + f" (other processes: {100 * meter.other_share():.0f}% of the machine)")
    print(f"  {'RSS MB':<8} " + " ".join(f"{p:>9}" for p in PROCESSES) + f" {'serve tree':>11}")
    for name, values in (("before", memory.before), ("peak", memory.peak), ("after", memory.after)):
        tree = sum(values.get(p, 0.0) for p in ("envoy", "edge", "service"))
        print(f"  {name:<8} " + " ".join(f"{values.get(p, 0.0):9.1f}" for p in PROCESSES) + f" {tree:11.1f}")


async def idle(bench: Bench, args: argparse.Namespace) -> None:
    url = bench.upstream if args.path == "direct" else (bench.envoy if args.path == "envoy" else bench.http)
    probe_path = "/healthz"
    request = RawHttp.build(url, probe_path, b"").replace(b"POST ", b"GET ", 1)
    memory = Memory(bench.all_pids)
    memory.before = memory.sample()
    conns: list[RawHttp] = []
    failures: collections.Counter[str] = collections.Counter()

    async def open_one() -> None:
        try:
            async with asyncio.timeout(args.timeout):
                conn = await RawHttp.connect(url)
                status, _ = await conn.request(request)
            if status != 200:
                failures[f"HTTP {status}"] += 1
            conns.append(conn)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            failures[type(exc).__name__] += 1

    began = time.perf_counter()
    for start in range(0, args.idle, 500):
        await asyncio.gather(*(open_one() for _ in range(min(500, args.idle - start))))
    opened = time.perf_counter() - began
    during = memory.sample()
    probe = await RawHttp.connect(url)
    probe_began = time.perf_counter()
    status, _ = await probe.request(request)
    probe_ms = 1000 * (time.perf_counter() - probe_began)
    probe.writer.close()
    open_now = sum(1 for conn in conns if not conn.reader.at_eof())
    for conn in conns:
        conn.writer.close()
    await asyncio.sleep(5.0)
    memory.after = memory.sample()
    print(f"\n{args.idle} idle keep-alive connections on path {args.path} (each after one GET {probe_path}): "
          f"opened in {opened:.1f} s, {len(conns)} answered, failures {dict(failures) or 0}, "
          f"{open_now} still open when measured")
    print(f"  a fresh request meanwhile: HTTP {status} in {probe_ms:.1f} ms")
    print(f"  {'RSS MB':<8} " + " ".join(f"{p:>9}" for p in PROCESSES))
    for name, values in (("before", memory.before), ("during", during), ("after", memory.after)):
        print(f"  {name:<8} " + " ".join(f"{values.get(p, 0.0):9.1f}" for p in PROCESSES))


async def run(args: argparse.Namespace) -> None:
    warning = quiet_check()
    if warning:
        print(warning, flush=True)
    bench = start_bench(*parse_settings(args.set))
    try:
        print(f"stack: pids {bench.pids}", flush=True)
        if args.streams:
            await streams(bench, args)
        if args.idle:
            await idle(bench, args)
    except BaseException:
        print(f"--- end of the switchboard serve output:\n{bench.log_tail()}")
        raise
    finally:
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000, help="concurrent streams (0: skip)")
    parser.add_argument("--model", default="drip-12-200", help="fake upstream model of the streams")
    parser.add_argument("--path", choices=("edge", "envoy", "direct"), default="edge")
    parser.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (0: skip)")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds after the last stream before the 'after' RSS (idle upstream connections "
                             "are closed after 15 s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of one stream or connection, s")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="a configuration key for the serve process; provider.KEY=YAML sets an option of "
                             "the fake upstream's provider; repeatable")
    args = parser.parse_args(argv)
    return run_timed(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
