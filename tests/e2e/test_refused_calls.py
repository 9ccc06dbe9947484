"""A call that the service refuses without running it (gRPC CANCELLED from the server: too many calls waiting)
is answered by the edge at once with 503 and Retry-After, so the client can retry; never with a 499."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.e2e.stack import API_KEY, Process, free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = Process([sys.executable, "-m", "tests.fakes.refusing_service"], name="refusing service")
    edge_process: Process | None = None
    try:
        target = service.wait_for("LISTENING", timeout=30).split()[1]
        http = f"127.0.0.1:{free_port()}"
        path = tmp_path_factory.mktemp("refused") / "edge.yaml"
        path.write_text(yaml.safe_dump({"server": {"http": http, "grpc_target": target},
                                        "auth": {"api_keys": [API_KEY]}}))
        edge_process = Process([sys.executable, "-m", "switchboard.cli.main", "edge", "--config", str(path)],
                               name="edge")
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://{http}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the edge did not listen within 30 s"
                time.sleep(0.1)
        yield f"http://{http}"
    finally:
        if edge_process is not None:
            edge_process.stop()
        service.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_call_is_503_with_retry_after(edge: str, stream: bool) -> None:
    reply = httpx.post(f"{edge}/v1/responses", json={"model": "fake/echo", "input": "hi", "stream": stream},
                       headers={"authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.json() == {"error": {"message": "The service is busy; retry the request.", "type": "server_error",
                                      "param": None, "code": "service_busy"}}
