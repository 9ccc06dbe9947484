"""The local model runs in a worker process that the service supervises: killing it, a model file that cannot load,
the per-model queue and cancellation, through a real `switchboard serve` and real worker processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import openai
import pytest

from tests.e2e.stack import API_KEY, Stack, start_stack

MODEL = "local/smollm2-135m-instruct"
# Greedy and long: the answer runs until it is stopped.
LONG = {"model": MODEL, "input": "Count from 1 to 1000, separated by commas.", "max_output_tokens": 400,
        "temperature": 0}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    pytest.importorskip("llama_cpp")
    tmp = Path(tmp_path_factory.mktemp("local"))
    corrupt = tmp / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(4096))
    providers = [
        {"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"},
        {"name": "local", "kind": "llama-cpp", "n_threads": 1, "socket_dir": str(tmp / "sockets"), "queue_size": 1,
         "restart_backoff": 0.2,
         "models": {"smollm2-135m-instruct": None, "corrupt": str(corrupt), "missing": str(tmp / "missing.gguf")}},
    ]
    stack = start_stack(tmp, upstream, envoy=False, local_model=False, extra={"providers": providers})
    yield stack
    stack.stop()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("worker", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def worker(stack: Stack, path: str) -> dict[str, Any]:
    """A route of the smollm2 worker, straight over its Unix socket."""
    connection = _UnixConnection(stack.config_path.parent / "sockets" / "smollm2-135m-instruct.sock")
    try:
        connection.request("GET", path)
        result: dict[str, Any] = json.loads(connection.getresponse().read())
        return result
    finally:
        connection.close()


def wait_until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError, http.client.HTTPException):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s: {check}")


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.http}/v1", api_key=API_KEY, max_retries=0, timeout=120)


class Background:
    """Requests to the fake upstream, one after another in a thread, until stopped: none may fail."""

    def __init__(self, stack: Stack) -> None:
        self.ok = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._client = sdk(stack)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._client.responses.create(model="fake/echo", input=f"alive {self.ok}")
                assert response.status == "completed"
                self.ok += 1
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def wait_ready_again(stack: Stack, old_pid: int) -> int:
    def fresh() -> int | None:
        health = worker(stack, "/health")
        return int(health["pid"]) if health.get("pid") != old_pid else None

    pid: int = wait_until(fresh, timeout=60)
    # The worker answering its socket is not yet the service having seen it ready: wait for the service's own line.
    wait_until(lambda: f"ready (worker pid {pid})" in "".join(stack.process.output), timeout=60)
    return pid


def test_kill_9_of_the_worker_mid_stream_fails_that_stream_and_nothing_else(local: Stack) -> None:
    background = Background(local)
    try:
        pid = worker(local, "/health")["pid"]
        events: list[dict[str, Any]] = []
        killed_at = 0.0
        with httpx.Client(base_url=local.http, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as http, \
                httpx_sse.connect_sse(http, "POST", "/v1/responses", json={**LONG, "stream": True}) as source:
            for sse in source.iter_sse():
                if sse.data == "[DONE]":
                    break
                events.append(sse.json())
                deltas = sum(e["type"] == "response.output_text.delta" for e in events)
                if deltas == 2 and not killed_at:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
        ended_after = time.monotonic() - killed_at
        assert killed_at, [e["type"] for e in events]
        assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
        assert events[-2]["error"]["code"] == "local_model_crashed" and "SIGKILL" in events[-2]["error"]["message"]
        assert ended_after < 2.0

        new_pid = wait_ready_again(local, pid)
        assert new_pid != pid
        assert "exited with signal SIGKILL; restart 1" in "".join(local.process.output)
        with sdk(local) as client:
            response = client.responses.create(model=MODEL, input="Reply with exactly OK", max_output_tokens=16)
        assert response.status in ("completed", "incomplete") and response.output_text
    finally:
        background.stop()
    assert background.errors == [] and background.ok > 0


def test_a_unary_call_during_the_kill_gets_a_502(local: Stack) -> None:
    pid = wait_until(lambda: worker(local, "/health")["pid"])
    with sdk(local) as client, ThreadPoolExecutor(1) as pool:
        call: Future[Any] = pool.submit(client.responses.create, **LONG)
        wait_until(lambda: worker(local, "/stats")["active"] == 1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIStatusError) as failed:
            call.result(timeout=30)
    assert failed.value.status_code == 502
    body = failed.value.response.json()["error"]
    assert body["code"] == "local_model_crashed" and body["type"] == "server_error"
    wait_ready_again(local, pid)


def test_a_model_file_that_cannot_load_is_a_clear_error_and_the_rest_serves(local: Stack) -> None:
    with httpx.Client(base_url=local.http, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        for _ in range(2):  # every request, not only the first
            for model, cause in (("local/corrupt", "corrupt.gguf"), ("local/missing", "does not exist")):
                reply = http.post("/v1/responses", json={"model": model, "input": "hi"})
                assert reply.status_code == 503, reply.text
                error = reply.json()["error"]
                assert error["code"] == "local_model_unavailable" and "cannot start" in error["message"]
                assert cause in error["message"]
        assert http.post("/v1/responses", json={"model": "fake/echo", "input": "still here"}).status_code == 200
        unknown = http.post("/v1/responses", json={"model": "local/nope", "input": "hi"})
        assert unknown.status_code == 404 and "local/smollm2-135m-instruct" in unknown.json()["error"]["message"]


def test_the_queue_is_bounded_and_a_cancelled_stream_stops_its_generation(local: Stack) -> None:
    wait_until(lambda: worker(local, "/health")["status"] == "ok")
    before = worker(local, "/stats")
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=local.http, headers=headers, timeout=120) as http, ThreadPoolExecutor(2) as pool:
        with httpx_sse.connect_sse(http, "POST", "/v1/responses", json={**LONG, "stream": True}) as first:
            events = first.iter_sse()
            while next(events).json()["type"] != "response.output_text.delta":
                pass
            # One generates, queue_size=1 may wait: of two more, one waits and one is refused at once.
            calls = [pool.submit(http.post, "/v1/responses", json={"model": MODEL, "input": "Say hi",
                                                                   "max_output_tokens": 16}) for _ in range(2)]
            refused = wait_until(lambda: next((c.result() for c in calls if c.done()), None), timeout=60)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "local_model_busy"
            assert int(refused.headers["retry-after"]) >= 1
            # Closing the first stream here cancels it: the worker stops generating between tokens.
        waited = next(c for c in calls if c.result(timeout=60) is not refused).result()
        assert waited.status_code == 200, waited.text
    stats = wait_until(lambda: (s := worker(local, "/stats"))["active"] == 0 and s)
    assert stats["cancelled"] == before["cancelled"] + 1
    assert stats["started"] == before["started"] + 2
    # The cancelled generation stopped early: far below its 400 tokens (the waiting call made at most 16).
    assert stats["output_tokens"] - before["output_tokens"] < 200


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_workers_never_outlive_the_service(tmp_path: Path, upstream: str, sig: signal.Signals) -> None:
    pytest.importorskip("llama_cpp")
    providers = [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"},
                 {"name": "local", "kind": "llama-cpp", "n_threads": 1, "socket_dir": str(tmp_path / "sockets"),
                  "models": {"smollm2-135m-instruct": None}}]
    stack = start_stack(tmp_path, upstream, envoy=False, local_model=False, extra={"providers": providers})
    try:
        pid = int(worker(stack, "/health")["pid"])
        assert _alive(pid)
        stack.process.proc.send_signal(sig)  # serve only, not its process group
        stack.process.proc.wait(30)
        wait_until(lambda: not _alive(pid), timeout=2.0)
    finally:
        if stack.process.proc.poll() is not None:
            # What serve itself may have left (its edge, after a SIGKILL) goes with the process group, before
            # the output pipe it may still hold is closed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stack.process.proc.pid, signal.SIGKILL)
        stack.stop()
