"""`server.grpc_unix`: the service listens on a Unix domain socket as well, and a separate edge of `serve`
(`server.edge: separate`) reaches it there; gRPC callers on the same host may use it too."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.responses.v1 import responses_service_pb2_grpc
from tests.e2e.stack import API_KEY, Stack, start_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def unix_stack(upstream: str) -> Iterator[tuple[Stack, Path]]:
    # A short path: a Unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sb-") as tmp:
        socket_path = Path(tmp) / "grpc.sock"
        stack = start_stack(Path(tmp) / "stack", upstream, envoy=False, local_model=False,
                            server={"grpc_unix": str(socket_path), "edge": "separate"})
        try:
            yield stack, socket_path
        finally:
            stack.stop()


def unix_sockets(path: Path) -> int:
    """Sockets of this host bound to ``path``: the listener and the connections it accepted."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[-1] == str(path))


def test_the_edge_and_grpc_callers_use_the_socket(unix_stack: tuple[Stack, Path]) -> None:
    stack, socket_path = unix_stack
    assert socket_path.is_socket()
    reply = httpx.post(f"{stack.http}/v1/responses", json={"input": "over a unix socket"},
                       headers={"authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"][0]["content"][0]["text"] == "echo: over a unix socket"
    # The listening socket and, accepted from the edge, at least one connection carry the path.
    assert unix_sockets(socket_path) >= 2
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        stored = stub.GetResponse(pb.GetResponseRequest(response_id=reply.json()["id"]),
                                  metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=10)
    assert stored.id == reply.json()["id"]
