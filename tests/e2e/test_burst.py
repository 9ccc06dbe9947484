"""A burst of 2,000 streams opened at once on one channel: the service takes every call (none is refused by
gRPC's backlog protection while the event loop catches up), and every stream completes. Bounded: 2,000 short
streams, 120 s at most."""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.responses.v1 import responses_service_pb2_grpc
from tests.e2e.stack import API_KEY, Process, free_port

pytestmark = pytest.mark.timeout(180)
BURST = 2000


@pytest.fixture(scope="module")
def service(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    path: Path = tmp_path_factory.mktemp("burst") / "service.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"grpc": address, "http": f"127.0.0.1:{free_port()}", "grace": 2},
        "auth": {"api_keys": [API_KEY]},
        "store": f"sqlite:///{path.parent / 'switchboard.db'}",
        "providers": [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"}],
        "default_model": "fake/echo",
    }))
    process = Process([sys.executable, "-m", "switchboard.cli.main", "service", "--config", str(path)], name="service")
    try:
        process.wait_for("gRPC service listening", timeout=60)
        yield address
    finally:
        process.stop()


def test_a_burst_of_streams_is_taken_whole(service: str) -> None:
    async def burst() -> collections.Counter[str]:
        outcomes: collections.Counter[str] = collections.Counter()
        async with grpc.aio.insecure_channel(service) as channel:
            stub = responses_service_pb2_grpc.ResponsesStub(channel)
            request = pb.CreateResponseRequest(input=pb.Input(text="burst"), stream=True, store=False)
            metadata = (("authorization", f"Bearer {API_KEY}"),)

            async def one() -> None:
                try:
                    kinds = [event.WhichOneof("event") async for batch in
                             stub.StreamResponseBatched(request, metadata=metadata, timeout=120)
                             for event in batch.events]
                    outcomes["completed" if kinds[-1] == "response_completed" else f"ended {kinds[-1]}"] += 1
                except grpc.aio.AioRpcError as error:
                    outcomes[error.code().name] += 1

            await asyncio.gather(*(one() for _ in range(BURST)))
        return outcomes

    assert asyncio.run(burst()) == {"completed": BURST}
