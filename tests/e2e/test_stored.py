"""What "stored" means across a process's end, with group commit (`store_commit_window`), on SQLite and PostgreSQL,
with real `switchboard service` processes: a response is readable right after its reply (through the writer's
queue), SIGTERM never loses a response whose reply was sent, and kill -9 never loses a background response."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml

from switchboard.responses.v1 import response_pb2, responses_service_pb2_grpc
from switchboard.responses.v1 import responses_service_pb2 as pb
from switchboard.service.store import open_store
from switchboard.shared.crypto import key_id
from tests import pg
from tests.e2e.stack import API_KEY, Process, free_port, start_upstream

pytestmark = pytest.mark.timeout(120)
AUTH = (("authorization", f"Bearer {API_KEY}"),)
# The longest commit window the configuration takes: a reply is always sent well before its response is committed.
WINDOW = 1.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    process, url = start_upstream()
    yield url
    process.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'switchboard.db'}"
        return
    try:
        admin = pg.server_dsn()
    except pg.PostgresUnavailable as err:
        pytest.fail(f"PostgreSQL is needed for these tests: {err}", pytrace=False)
    dsn = pg.create_database(admin, "switchboard_stored")
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    yield f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}" \
          f"/{parts['dbname']}"
    pg.drop_database(admin, dsn)


class Service:
    def __init__(self, tmp: Path, database: str, upstream: str) -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        config = {
            "server": {"grpc": self.grpc, "http": f"127.0.0.1:{free_port()}", "grace": 5},
            "auth": {"api_keys": [API_KEY]},
            "store": database,
            "store_commit_window": WINDOW,
            "providers": [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"}],
            "default_model": "fake/echo",
            "background": {"lease_seconds": 1.0, "poll_seconds": 0.05},
        }
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "service.yaml").write_text(yaml.safe_dump(config))
        self.process = Process([sys.executable, "-m", "switchboard.cli.main", "service",
                                "--config", str(tmp / "service.yaml")],
                               name="switchboard service")
        self.channel = grpc.insecure_channel(self.grpc)
        self.stub = responses_service_pb2_grpc.ResponsesStub(self.channel)
        try:
            self.process.wait_for("gRPC service listening", timeout=60)
        except BaseException:
            self.stop()
            raise

    def create(self, text: str, *, previous: str | None = None, background: bool = False) -> response_pb2.Response:
        request = pb.CreateResponseRequest(input=pb.Input(text=text), background=background)
        if previous is not None:
            request.previous_response_id = previous
        reply: response_pb2.Response = self.stub.CreateResponse(request, metadata=AUTH, timeout=20)
        return reply

    def get(self, response_id: str) -> response_pb2.Response:
        reply: response_pb2.Response = self.stub.GetResponse(pb.GetResponseRequest(response_id=response_id),
                                                             metadata=AUTH, timeout=20)
        return reply

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.channel.close()
        return self.process.stop(sig, timeout=30)


def stored_ids(database: str, ids: list[str]) -> set[str]:
    """The ids of ``ids`` that are in the database, read with a store of its own (no queue of the service's)."""

    async def read() -> set[str]:
        store = open_store(database)
        try:
            owner = key_id(API_KEY)
            return {rid for rid in ids if await store.get_response(owner, rid) is not None}
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_reply_is_readable_at_once(tmp_path: Path, database: str, upstream: str) -> None:
    service = Service(tmp_path, database, upstream)
    try:
        first = service.create("first")
        assert service.get(first.id).id == first.id
        items = service.stub.ListInputItems(pb.ListInputItemsRequest(response_id=first.id), metadata=AUTH, timeout=20)
        # Stored input is normalised as OpenAI lists it: content as typed parts.
        assert [[part.input_text.text for part in item.message.content.parts.parts] for item in items.data] \
            == [["first"]]
        second = service.create("second", previous=first.id)
        assert second.previous_response_id == first.id
        assert service.get(second.id).status == response_pb2.RESPONSE_STATUS_COMPLETED
        assert service.stub.DeleteResponse(pb.DeleteResponseRequest(response_id=second.id), metadata=AUTH,
                                           timeout=20).deleted
        with pytest.raises(grpc.RpcError) as err:
            service.get(second.id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert service.stop() == 0


def test_sigterm_keeps_every_replied_response(tmp_path: Path, database: str, upstream: str) -> None:
    service = Service(tmp_path, database, upstream)
    try:
        ids = [service.create(f"turn {n}").id for n in range(20)]
    finally:
        assert service.stop(signal.SIGTERM) == 0
    assert stored_ids(database, ids) == set(ids)


def test_kill_9_keeps_background_responses_and_committed_ones(tmp_path: Path, database: str, upstream: str) -> None:
    service = Service(tmp_path, database, upstream)
    try:
        committed = service.create("before").id
        deadline = time.monotonic() + 30
        while not stored_ids(database, [committed]):  # committed by the writer on its own, without a stop
            assert time.monotonic() < deadline, "the writer did not commit within 30 s"
            time.sleep(0.1)
        finished = service.create("finished in the background", background=True).id
        deadline = time.monotonic() + 30
        while service.get(finished).status != response_pb2.RESPONSE_STATUS_COMPLETED:
            assert time.monotonic() < deadline, "the background response did not complete"
            time.sleep(0.05)
        background = service.create("in the background", background=True)
        assert background.status == response_pb2.RESPONSE_STATUS_QUEUED
    finally:
        service.stop(signal.SIGKILL)
    assert stored_ids(database, [committed, finished, background.id]) == {committed, finished, background.id}
    restarted = Service(tmp_path, database, upstream)
    try:
        # Its job runs again, or fails when the killed process had already started its stream: never stuck.
        deadline = time.monotonic() + 30
        while restarted.get(background.id).status not in (response_pb2.RESPONSE_STATUS_COMPLETED,
                                                          response_pb2.RESPONSE_STATUS_FAILED):
            assert time.monotonic() < deadline, "the background response did not end after a restart"
            time.sleep(0.1)
        assert restarted.get(committed).id == committed
        assert restarted.get(finished).status == response_pb2.RESPONSE_STATUS_COMPLETED
    finally:
        assert restarted.stop() == 0
