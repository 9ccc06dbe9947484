"""Starts real processes on ephemeral ports: the fake upstream and `switchboard serve` (service, edge, Envoy)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from tests.processes import descendants, kill_tree, launcher, track
from tests.wire import RECORDER

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process whose output lines are collected, so tests can wait for a line.

    The process leads a process group of its own and dies with the pytest process (see tests/processes.py). The
    pump thread alone owns the output pipe and ends when every writer is gone; `stop` never waits on it, so a
    grandchild that still holds the pipe cannot hang the suite."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, name: str = "") -> None:
        self.name = name or args[0]
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [*launcher(), *args], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        track(self.proc.pid)
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, stdout: IO[str]) -> None:
        with stdout:
            for line in stdout:
                self.output.append(line)
                self.lines.put(line)

    def wait_for(self, marker: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if marker in line:
                return line
        raise RuntimeError(f"{self.name} did not print {marker!r}:\n{''.join(self.output)[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Sends ``sig`` and waits up to ``timeout`` for the process to exit; then kills its group and every
        descendant that is left. Its exit status."""
        family = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(self.proc.pid, known=family)
        return self.proc.wait(5)


def start_upstream(kind: str = "openai_chat") -> tuple[Process, str]:
    """A fake upstream: `openai_chat`, `openai_responses` or `anthropic` (modules in tests/fakes)."""
    process = Process([sys.executable, "-m", f"tests.fakes.{kind}", "--host", "127.0.0.1", "--port", "0"],
                      name=f"fake {kind} upstream")
    line = process.wait_for("LISTENING", timeout=30)
    return process, line.split()[1]


@dataclass
class Stack:
    process: Process
    config_path: Path
    grpc: str
    http: str
    envoy: str | None
    upstream: str
    # `server.edge`: the edge inside the service's process, or processes of its own.
    edge_mode: str = "in-process"

    def stop(self) -> int:
        return self.process.stop()


def write_config(path: Path, upstream: str, *, envoy: bool = True, extra: dict[str, Any] | None = None,
                 local_model: bool = True, more_upstreams: dict[str, str] | None = None,
                 server: dict[str, Any] | None = None) -> dict[str, str]:
    """`extra` replaces top-level keys; `server` adds keys to the generated `server` mapping."""
    ports = {"grpc": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    if envoy:
        ports |= {"envoy": f"127.0.0.1:{free_port()}", "envoy_admin": f"127.0.0.1:{free_port()}",
                  "envoy_grpc": f"127.0.0.1:{free_port()}"}
    providers: list[dict[str, Any]] = [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"}]
    for kind, url in (more_upstreams or {}).items():
        if kind == "anthropic":
            providers.append({"name": "anthropic", "kind": "anthropic", "base_url": url, "api_key": "sk-ant-test"})
        else:
            providers.append({"name": "responses", "kind": "openai-responses", "base_url": f"{url}/v1",
                              "api_key": "sk-responses-test"})
    if local_model:
        providers.append({"name": "local", "kind": "llama-cpp", "n_threads": 1})
    config: dict[str, Any] = {
        "server": {**ports, "grace": 5, **(server or {})},
        "auth": {"api_keys": [API_KEY]},
        "store": f"sqlite:///{path.parent / 'switchboard.db'}",
        "providers": providers,
        "default_model": "fake/echo",
        "pricing": {"fake/echo": {"prompt": 1.0, "completion": 2.0}},
        # A model whose only endpoint has a tiny context window, for trimming tests.
        "routing": {"models": [{"name": "tiny-context",
                                "endpoints": [{"provider": "fake", "model": "echo", "context_length": 300}]}]},
        "encryption_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(config))
    return ports


def start_stack(tmp: Path, upstream: str, *, env: dict[str, str] | None = None, envoy: bool = True,
                extra: dict[str, Any] | None = None, local_model: bool = True,
                more_upstreams: dict[str, str] | None = None, server: dict[str, Any] | None = None) -> Stack:
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "switchboard.yaml"
    ports = write_config(config_path, upstream, envoy=envoy, extra=extra, local_model=local_model,
                         more_upstreams=more_upstreams, server=server)
    process = Process([sys.executable, "-m", "switchboard.cli.main", "serve", "--config", str(config_path)],
                      env=env, name="switchboard serve")
    try:
        process.wait_for("switchboard: ready", timeout=120)
    except BaseException:
        process.stop()
        raise
    stack = Stack(
        process=process, config_path=config_path, grpc=ports["grpc"], http=f"http://{ports['http']}",
        envoy=f"http://{ports['envoy']}" if envoy else None, upstream=upstream,
        edge_mode=(server or {}).get("edge", "in-process"),
    )
    # Every answer of this gateway is checked for wire conformance (tests/wire.py).
    for url in (stack.http, stack.envoy, stack.grpc):
        if url is not None:
            RECORDER.add_gateway(url)
    return stack


def upstream_requests(upstream: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = httpx.get(f"{upstream}/_requests").json()
    return result
