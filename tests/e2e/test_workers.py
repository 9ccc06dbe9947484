"""`server.workers: N`: serve runs N service processes (each serving the edge too, by default; or N service and N
edge processes with `server.edge: separate`) sharing their ports; background jobs and rate limits (shared through
Redis, which several workers require) work across them."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import redis_server
from tests.e2e.stack import API_KEY, Process, Stack, start_stack, write_config
from tests.e2e.test_supervisor import answers
from tests.processes import alive, descendants

AUTH = {"authorization": f"Bearer {API_KEY}"}
# Its own key each run: a Redis on 127.0.0.1:6379 may keep counts from an earlier run.
LIMITED = f"sk-limited-{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    yield from redis_server.redis_url()


def limited(mode: str) -> str:
    """The rate-limited key of one stack (each counts in Redis on its own)."""
    return f"{LIMITED}-{mode}"


@pytest.fixture(scope="module", params=["in-process", "separate"])
def workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: str,
            redis_url: str) -> Iterator[Stack]:
    key = limited(request.param)
    limits = {"requests_per_minute": 1000, "redis_url": redis_url, "per_key": {key: {"requests_per_minute": 3}}}
    home = Path(tmp_path_factory.mktemp("workers"))
    stack = start_stack(home, upstream, local_model=False,
                        server={"workers": 2, "grpc_unix": str(home / "grpc.sock"), "edge": request.param},
                        extra={"rate_limits": limits, "auth": {"api_keys": [API_KEY, key]}})
    yield stack
    stack.stop()


def processes(stack: Stack, command: str) -> list[int]:
    found = []
    for pid in descendants(stack.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except OSError:
            continue
        if parent == stack.process.pid and f"switchboard.cli.main {command} " in cmdline and alive(pid):
            found.append(pid)
    return found


def http_processes(stack: Stack) -> list[int]:
    """The processes that serve HTTP: the edges, or the services when the edge runs inside them."""
    return processes(stack, "service" if stack.edge_mode == "in-process" else "edge")


def test_two_processes_of_each_kind_share_the_ports(workers: Stack) -> None:
    separate = workers.edge_mode == "separate"
    assert len(processes(workers, "service")) == 2 and len(processes(workers, "edge")) == (2 if separate else 0)
    # Each service (and its edge) has its own Unix socket: a second listener on one path would replace the first.
    unix = workers.config_path.parent / "grpc.sock"
    assert sorted(p.name for p in unix.parent.glob(unix.name + ".*")) == [unix.name + ".0", unix.name + ".1"]
    assert workers.envoy is not None
    for _ in range(20):  # a fresh connection each time: the kernel spreads them over both edges
        assert answers(workers.http) and answers(workers.envoy)


def test_one_http_process_killed_the_other_keeps_serving(workers: Stack) -> None:
    victim = http_processes(workers)[0]
    os.kill(victim, signal.SIGKILL)
    ok = [answers(workers.http) for _ in range(10)]
    workers.process.wait_for("is back", timeout=60)
    assert all(ok), ok
    assert len(http_processes(workers)) == 2 and victim not in http_processes(workers)


def test_background_jobs_run_across_workers(workers: Stack) -> None:
    with httpx.Client(base_url=workers.http, headers=AUTH, timeout=30) as http:
        ids = [http.post("/v1/responses", json={"model": "fake/echo", "input": f"job {i}", "background": True})
               .json()["id"] for i in range(6)]
        deadline = time.monotonic() + 30
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            statuses = {i: http.get(f"/v1/responses/{i}").json()["status"] for i in ids}
            if all(s == "completed" for s in statuses.values()):
                break
            time.sleep(0.1)
    assert all(s == "completed" for s in statuses.values()), statuses


def test_rate_limits_count_across_processes(workers: Stack) -> None:
    codes = []
    for _ in range(5):
        # New connections: the requests land on either edge and either service.
        reply = httpx.post(f"{workers.http}/v1/responses", json={"input": "limited"},
                           headers={"authorization": f"Bearer {limited(workers.edge_mode)}"}, timeout=30)
        codes.append(reply.status_code)
    assert codes == [200, 200, 200, 429, 429], codes


def test_several_workers_without_shared_rate_limits_is_a_config_error(tmp_path: Path, upstream: str) -> None:
    path = tmp_path / "switchboard.yaml"
    write_config(path, upstream, envoy=False, local_model=False, server={"workers": 2},
                 extra={"rate_limits": {"requests_per_minute": 10}})
    run = Process([sys.executable, "-m", "switchboard.cli.main", "serve", "--config", str(path)], name="serve")
    code = run.proc.wait(60)
    run.stop()
    assert code == 2
    assert ("configuration error: rate_limits: with server.workers > 1 the service processes must share their "
            "counts; set rate_limits.redis_url (or redis_url_env)") in "".join(run.output)
