"""Shared pieces of the benchmarks: start the fake upstream and `switchboard serve`, account the CPU of every
process, a minimal keep-alive HTTP/1.1 client, and percentiles.

The stack is started like ``tests/e2e/stack.py`` does (same config writer), except that the serve process writes
its output (including Envoy's per-request JSON access log) to a file instead of a pipe read by a thread of the
benchmark process: that thread would compete with the load generator for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop
import yaml

from tests.e2e.stack import API_KEY, ROOT, Process, start_upstream, write_config

__all__ = ["API_KEY", "Bench", "CpuMeter", "RawHttp", "parse_settings", "percentile", "quiet_check", "start_bench"]

_TICK = os.sysconf("SC_CLK_TCK")


def _clean_env() -> dict[str, str]:
    # No OTLP export in the benchmark (it would make the service and edge trace every request).
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            found += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """CPU seconds the whole machine (all cores) spent in processes since boot, from /proc/stat: user, nice,
    system and steal. Interrupt and softirq time (much of loopback networking) is left out: it is charged to no
    process, so it would otherwise look like foreign load."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return (user + nice + system + steal) / _TICK


def quiet_check(seconds: float = 1.0, limit: float = 0.10) -> str | None:
    """A warning when other work keeps the machine busy (the figures would be worth little), else None."""
    start, began = machine_busy(), time.perf_counter()
    time.sleep(seconds)
    share = (machine_busy() - start) / ((time.perf_counter() - began) * (os.cpu_count() or 1))
    if share > limit:
        return (f"WARNING: the machine is {100 * share:.0f}% busy before the benchmark starts (other processes); "
                "the figures will be distorted. See the 'other' columns.")
    return None


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Bench:
    """The running processes: fake upstream, and `switchboard serve` with its edge and Envoy children."""

    upstream_process: Process
    upstream: str
    serve: subprocess.Popen[bytes]
    log_path: Path
    tmp: tempfile.TemporaryDirectory[str]
    grpc: str
    http: str
    envoy: str
    envoy_grpc: str | None
    pids: dict[str, int] = field(default_factory=dict)
    # Every process of each role (several with server.workers > 1); `pids` holds the first of each.
    all_pids: dict[str, list[int]] = field(default_factory=dict)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the serve process's output (service, edge and Envoy's access log)."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def reset_upstream(self) -> None:
        """Empties the fake upstream's request log, so its growth (and GC cost) does not drift across paths."""
        for route in ("/_requests", "/_stats"):
            with urllib.request.urlopen(urllib.request.Request(self.upstream + route, method="DELETE"), timeout=5):
                pass

    def stop(self) -> None:
        try:
            if self.serve.poll() is None:
                self.serve.send_signal(signal.SIGTERM)
                try:
                    self.serve.wait(25)
                except subprocess.TimeoutExpired:
                    os.killpg(self.serve.pid, signal.SIGKILL)
                    self.serve.wait(5)
            # Anything of the serve process group that outlived it (edge, Envoy).
            try:
                os.killpg(self.serve.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            self.upstream_process.stop()
            self.tmp.cleanup()


def parse_settings(settings: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set KEY=YAML`` options -> (top-level keys, `server` keys, the fake provider's keys): ``server.NAME=...``
    and ``provider.NAME=...`` go to the latter two."""
    found: dict[str, dict[str, Any]] = {"": {}, "server": {}, "provider": {}}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"--set {setting!r}: expected KEY=VALUE")
        scope, dot, name = key.partition(".")
        if not dot or scope not in found:
            scope, name = "", key
        found[scope][name] = yaml.safe_load(value)
    return found[""], found["server"], found["provider"]


def _wait_ready(serve: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "switchboard: ready" in log_path.read_text(errors="replace"):
            return
        if serve.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"switchboard serve did not become ready:\n{log_path.read_text(errors='replace')[-4000:]}")


def start_bench(extra: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
                provider: dict[str, Any] | None = None) -> Bench:
    """Starts the fake upstream and `switchboard serve` (service, edge, Envoy; no local model). ``extra`` replaces
    top-level configuration keys, ``server`` adds keys to the `server` mapping, ``provider`` to the fake upstream's
    provider (``parse_settings``)."""
    upstream_process, upstream = start_upstream()
    tmp = tempfile.TemporaryDirectory(prefix="switchboard-bench-")
    serve: subprocess.Popen[bytes] | None = None
    try:
        config_path = Path(tmp.name) / "switchboard.yaml"
        ports = write_config(config_path, upstream, envoy=True, local_model=False, extra=extra, server=server)
        if provider:
            config = yaml.safe_load(config_path.read_text())
            config["providers"][0].update(provider)
            config_path.write_text(yaml.safe_dump(config))
        log_path = Path(tmp.name) / "serve.log"
        with log_path.open("wb") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "switchboard.cli.main", "serve", "--config", str(config_path)],
                cwd=ROOT, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_ready(serve, log_path)
        bench = Bench(upstream_process, upstream, serve, log_path, tmp, ports["grpc"], f"http://{ports['http']}",
                      f"http://{ports['envoy']}", ports.get("envoy_grpc"))
        bench.all_pids["upstream"] = [upstream_process.proc.pid]
        # `serve` supervises the children: the service (with the edge in process, by default), the edge when it
        # runs separately, and Envoy are its child processes.
        for child in _children(serve.pid):
            cmd = _cmdline(child)
            if "envoy" in cmd.split(" ", 1)[0]:
                bench.all_pids.setdefault("envoy", []).append(child)
            elif "switchboard.cli.main edge" in cmd:
                bench.all_pids.setdefault("edge", []).append(child)
            elif "switchboard.cli.main service" in cmd:
                bench.all_pids.setdefault("service", []).append(child)
        bench.all_pids.setdefault("service", [serve.pid])
        bench.pids = {name: pids[0] for name, pids in bench.all_pids.items()}
        return bench
    except BaseException:
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(5)
        upstream_process.stop()
        tmp.cleanup()
        raise


class CpuMeter:
    """CPU seconds spent by each process (and by this client process) between start() and stop()."""

    def __init__(self, pids: Mapping[str, int | list[int]]) -> None:
        self.pids = {name: [pid] if isinstance(pid, int) else pid for name, pid in pids.items()}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self.other = 0.0

    def _sample(self) -> dict[str, float]:
        sample = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        sample["client"] = self_cpu()
        sample["machine"] = machine_busy()
        sample["wall"] = time.perf_counter()
        return sample

    def __enter__(self) -> CpuMeter:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.wall = end.pop("wall") - self._start.pop("wall")
        machine = end.pop("machine") - self._start.pop("machine")
        self.used = {name: end[name] - self._start[name] for name in end}
        # Process CPU of the whole machine not accounted to the benchmark's processes: other work on the box.
        self.other = max(0.0, machine - sum(self.used.values()))

    def other_share(self) -> float:
        """`other` as a share of the machine's capacity during the measurement (0..1)."""
        return self.other / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0

    def per_request_ms(self, count: int) -> dict[str, float]:
        return {name: 1000 * seconds / count for name, seconds in self.used.items()}


class RawHttp:
    """One keep-alive HTTP/1.1 connection with a minimal parser (Content-Length or chunked bodies).

    Much cheaper per request than httpx, so the load generator does not steal the CPU the gateway needs.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> RawHttp:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
        return cls(reader, writer)

    @staticmethod
    def build(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        host = urlsplit(url).netloc
        lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json",
                 f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def head(self, request: bytes) -> tuple[int, bytes]:
        """Sends a prepared request; returns the status and the raw (lower-cased) header block."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        return int(head[9:12]), head.lower()

    async def request(self, request: bytes) -> tuple[int, bytes]:
        status, head = await self.head(request)
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            end = head.index(b"\r\n", start + 2)
            return status, await self.reader.readexactly(int(head[start + 17:end]))
        if b"\r\ntransfer-encoding: chunked" in head:
            chunks = []
            while chunk := await self.chunk():
                chunks.append(chunk)
            return status, b"".join(chunks)
        raise RuntimeError(f"response without a length: {head!r}")

    async def body(self, head: bytes) -> AsyncIterator[bytes]:
        """The body after ``head`` as it arrives: chunk by chunk (chunked), or in one piece (Content-Length)."""
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            end = head.index(b"\r\n", start + 2)
            yield await self.reader.readexactly(int(head[start + 17:end]))
            return
        while chunk := await self.chunk():
            yield chunk

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body; b"" at its end."""
        size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")  # no trailers expected
            return b""
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def run_timed(run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], args: argparse.Namespace) -> int:
    """Runs a benchmark's coroutine on uvloop and prints its total time: the end of every bench's ``main``."""
    started = time.monotonic()
    uvloop.run(run(args))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]
