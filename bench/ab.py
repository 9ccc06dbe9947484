"""A lever, A against B: two stacks side by side, measured in alternating rounds, with the direct floor.

    python -m bench.ab --a store_commit_window=null --b "" [--path edge|grpc|envoy] [--rounds 8]
                       [--requests 400] [--concurrency 1]

On a machine shared with other work, figures of runs made minutes apart are not comparable. This starts two
stacks (like bench.latency; A and B differ only by their ``--set``-style settings, comma-separated), then runs
``--rounds`` rounds; each round measures the direct upstream (the floor), A and B (in alternating order) with the
same tiny request, ``--requests`` requests at ``--concurrency``. Per variant it prints the median over rounds of:
p50 latency, p50 added to the direct floor of the same round, requests/s, and CPU ms per request of the edge,
the service and both (from /proc, all threads).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

from bench.harness import Bench, CpuMeter, parse_settings, percentile, quiet_check, run_timed, start_bench
from bench.latency import Target, concurrent, make_targets


@dataclass
class Rounds:
    p50: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def _settings(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


async def _round(target: Target, bench: Bench, args: argparse.Namespace) -> tuple[float, float, dict[str, float]]:
    calls = [await target.worker() for _ in range(args.concurrency)]
    await concurrent(calls, args.requests // 10)
    with CpuMeter(bench.all_pids) as meter:
        wall, latencies = await concurrent(calls, args.requests)
    await target.close()
    return 1000 * percentile(latencies, 50), args.requests / wall, meter.per_request_ms(args.requests)


def _target(bench: Bench, name: str, concurrency: int) -> Target:
    return next(t for t in make_targets(bench, "raw", concurrency) if t.name == name)


async def run(args: argparse.Namespace) -> None:
    warning = quiet_check()
    if warning:
        print(warning, flush=True)
    pairs = (("A", args.a), ("B", args.b))
    stacks = {name: start_bench(*parse_settings(_settings(setting))) for name, setting in pairs}
    results = {name: Rounds() for name in stacks}
    floor: list[float] = []
    try:
        for index in range(args.rounds):
            direct, _, _ = await _round(_target(stacks["A"], "direct", args.concurrency), stacks["A"], args)
            floor.append(direct)
            for name in ("A", "B") if index % 2 == 0 else ("B", "A"):
                bench = stacks[name]
                p50, rps, cpu = await _round(_target(bench, args.path, args.concurrency), bench, args)
                found = results[name]
                found.p50.append(p50)
                found.added.append(p50 - direct)
                found.rps.append(rps)
                for process in ("edge", "service"):
                    found.cpu.setdefault(process, []).append(cpu.get(process, 0.0))
                found.cpu.setdefault("edge+service", []).append(cpu.get("edge", 0.0) + cpu.get("service", 0.0))
            print(f"  round {index + 1}/{args.rounds} done", flush=True)
    finally:
        for bench in stacks.values():
            bench.stop()
    med = statistics.median
    print(f"\npath {args.path}, {args.rounds} rounds of {args.requests} requests at concurrency {args.concurrency}; "
          f"medians over rounds; direct floor p50 {med(floor):.2f} ms")
    print(f"{'variant':<8} {'p50 ms':>7} {'added':>7} {'req/s':>7} {'edge cpu':>9} {'svc cpu':>8} {'both':>7}"
          "  settings")
    for name, setting in (("A", args.a), ("B", args.b)):
        r = results[name]
        print(f"{name:<8} {med(r.p50):7.2f} {med(r.added):7.2f} {med(r.rps):7.0f} {med(r.cpu['edge']):9.3f} "
              f"{med(r.cpu['service']):8.3f} {med(r.cpu['edge+service']):7.3f}  {setting or '(defaults)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default="", help="settings of stack A: KEY=YAML,KEY=YAML (see bench.latency --set)")
    parser.add_argument("--b", default="", help="settings of stack B")
    parser.add_argument("--path", choices=("edge", "grpc", "envoy", "edge-nostore"), default="edge")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="requests per variant per round")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    return run_timed(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
