"""Where the gateway's time goes: sample the service and edge processes with py-spy under load.

    .venv/bin/pip install py-spy     # not a project dependency
    python -m bench.profile [--path edge|grpc|envoy|stream] [--seconds 8] [--concurrency 16] [--top 25]

Starts the same stack as bench.latency, drives the chosen path with the raw keep-alive client (or gRPC), records
each Python process with ``py-spy record --format raw`` (collapsed stacks, GIL-holding and idle samples
excluded), and prints per process the functions with the most samples: "self" (the function itself was running)
and "incl" (the function was on the stack). Raw stacks are kept in --out for flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import orjson
import uvloop

from bench.harness import API_KEY, Bench, RawHttp, start_bench
from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc

_LINE = re.compile(r" \(([^()]*):\d+\)$")
EDGE_BODY = orjson.dumps({"model": "fake/echo", "input": "hello"})
STREAM_BODY = orjson.dumps({"model": "fake/fixed-2000", "input": "hello", "stream": True})


def _frame(frame: str) -> str:
    # "create_response (edge/app.py:103)" -> "create_response (edge/app.py)"; trims site-packages prefixes.
    frame = _LINE.sub(lambda m: f" ({m.group(1)})", frame)
    return re.sub(r"\(/[^()]*?/(site-packages|lib/python3\.\d+)/", "(", frame)


def summarize(raw: Path, top: int) -> str:
    if not raw.exists():
        return "  (no profile written)"
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        # The first frame is the thread name ("process 123:..." / "thread ..."): skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            incl[name] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples"]
    lines.append("  self%  function")
    lines += [f"  {100 * n / total:5.1f}  {name}" for name, n in own.most_common(top)]
    lines.append("  incl%  function")
    lines += [f"  {100 * n / total:5.1f}  {name}" for name, n in incl.most_common(top)]
    return "\n".join(lines)


async def load(bench: Bench, path: str, seconds: float, concurrency: int) -> int:
    deadline = time.monotonic() + seconds
    done = 0
    if path in ("grpc", "grpc-stream"):
        channel = grpc.aio.insecure_channel(bench.grpc)
        rpc = responses_service_pb2_grpc.ResponsesStub(channel)
        request = responses_service_pb2.CreateResponseRequest(
            model="fake/fixed-2000" if path == "grpc-stream" else "fake/echo",
            input=responses_service_pb2.Input(text="hello"))
        metadata = (("authorization", f"Bearer {API_KEY}"),)

        async def grpc_worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                if path == "grpc":
                    await rpc.CreateResponse(request, metadata=metadata, timeout=30)
                else:
                    async for _ in rpc.StreamResponse(request, metadata=metadata, timeout=60):
                        pass
                done += 1

        try:
            await asyncio.gather(*(grpc_worker() for _ in range(concurrency)))
        finally:
            await channel.close()
        return done
    base = bench.envoy if path == "envoy" else bench.http
    body = STREAM_BODY if path == "stream" else EDGE_BODY
    request = RawHttp.build(base, "/v1/responses", body, {"authorization": f"Bearer {API_KEY}"})

    async def worker() -> None:
        nonlocal done
        conn = await RawHttp.connect(base)
        try:
            while time.monotonic() < deadline:
                status, reply = await conn.request(request)
                if status != 200:
                    raise RuntimeError(f"{status}: {reply[:200]!r}")
                done += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=("edge", "envoy", "grpc", "stream", "grpc-stream"), default="edge")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native (C/Cython) frames")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("/tmp/switchboard-profile"))
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    bench = start_bench()
    spies: dict[str, subprocess.Popen[bytes]] = {}
    try:
        uvloop.run(load(bench, args.path, 2.0, args.concurrency))  # warm-up
        targets = {name: bench.pids[name] for name in ("service", "edge") if name in bench.pids}
        if args.path in ("grpc", "grpc-stream"):
            targets.pop("edge", None)
        for name, pid in targets.items():
            cmd = [spy, "record", "-p", str(pid), "-r", str(args.rate), "-d", str(int(args.seconds)),
                   "--format", "raw", "-o", str(args.out / f"{name}.txt")]
            (args.out / f"{name}.txt").unlink(missing_ok=True)
            # --native needs to pause the process while it reads the stack (slower, but attributes C time).
            cmd.append("--native" if args.native else "--nonblocking")
            spies[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        done = uvloop.run(load(bench, args.path, args.seconds, args.concurrency))
        for name, proc in spies.items():
            _, err = proc.communicate(timeout=args.seconds + 30)
            if proc.returncode != 0:
                print(f"py-spy on {name} failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        print(f"{done} requests on path {args.path} in {args.seconds:.0f} s at concurrency {args.concurrency}")
        for name in spies:
            print(f"\n== {name} (pid {targets[name]}) ==")
            print(summarize(args.out / f"{name}.txt", args.top))
    finally:
        for proc in spies.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        bench.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
