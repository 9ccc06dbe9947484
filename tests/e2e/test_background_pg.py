"""Background jobs shared by two service replicas (`switchboard service`) on one PostgreSQL database: every job
runs exactly once, and a replica killed with SIGKILL mid-job leaves no job stuck (its jobs are run again by the
other replica once their lease expires, or failed when their stream had already started)."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml

from switchboard.edge import codec
from switchboard.responses.v1 import response_pb2, responses_service_pb2_grpc
from switchboard.responses.v1 import responses_service_pb2 as pb
from tests import pg
from tests.e2e.stack import API_KEY, Process, free_port, start_upstream, upstream_requests
from tests.streams import check_stream

pytestmark = pytest.mark.timeout(90)
AUTH = (("authorization", f"Bearer {API_KEY}"),)
QUEUED, IN_PROGRESS = response_pb2.RESPONSE_STATUS_QUEUED, response_pb2.RESPONSE_STATUS_IN_PROGRESS
COMPLETED, FAILED = response_pb2.RESPONSE_STATUS_COMPLETED, response_pb2.RESPONSE_STATUS_FAILED
# The lease the service's worker takes on a job (config `background.lease_seconds`): a killed replica's jobs are
# claimed again after it.
LEASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def pg_admin() -> str:
    try:
        return pg.server_dsn()
    except pg.PostgresUnavailable as err:
        pytest.fail(f"PostgreSQL is needed for these tests: {err}", pytrace=False)


@pytest.fixture
def database(pg_admin: str) -> Iterator[str]:
    """A fresh database per test, as the `postgresql://` URL the `store` setting takes; the replicas migrate it."""
    dsn = pg.create_database(pg_admin, "switchboard_bg")
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = f"{parts.get('user', 'postgres')}" + (f":{parts['password']}" if parts.get("password") else "")
    yield f"postgresql://{auth}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/{parts['dbname']}"
    pg.drop_database(pg_admin, dsn)


class Replica:
    """`switchboard service` with its own fake upstream, so the requests of each replica can be told apart."""

    def __init__(self, tmp: Path, database: str) -> None:
        self.upstream_process, self.upstream = start_upstream()
        self.grpc = f"127.0.0.1:{free_port()}"
        config = {
            "server": {"grpc": self.grpc, "http": f"127.0.0.1:{free_port()}", "grace": 2},
            "auth": {"api_keys": [API_KEY]},
            "store": database,
            "providers": [{"name": "fake", "kind": "openai-chat", "base_url": f"{self.upstream}/v1"}],
            "default_model": "fake/echo",
            "background": {"lease_seconds": LEASE_SECONDS, "poll_seconds": 0.1},
        }
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "service.yaml").write_text(yaml.safe_dump(config))
        self.process = Process([sys.executable, "-m", "switchboard.cli.main", "service",
                                "--config", str(tmp / "service.yaml")],
                               name=f"service {tmp.name}")
        self.channel = grpc.insecure_channel(self.grpc)
        self.stub = responses_service_pb2_grpc.ResponsesStub(self.channel)
        try:
            self.process.wait_for("gRPC service listening", timeout=60)
        except BaseException:
            self.stop()
            raise

    def submit(self, text: str, model: str) -> str:
        request = pb.CreateResponseRequest(model=model, input=pb.Input(text=text), background=True)
        response = self.stub.CreateResponse(request, metadata=AUTH, timeout=10)
        assert response.status == QUEUED and response.background
        return str(response.id)

    def get(self, response_id: str) -> response_pb2.Response:
        request = pb.GetResponseRequest(response_id=response_id)
        return self.stub.GetResponse(request, metadata=AUTH, timeout=10)  # type: ignore[no-any-return]

    def events(self, response_id: str) -> list[dict[str, Any]]:
        """The persisted stream, as the JSON events the edge would send."""
        call = self.stub.ResumeResponse(pb.GetResponseRequest(response_id=response_id), metadata=AUTH, timeout=10)
        return [json.loads(codec.dumps(event)) for event in call]

    def jobs_seen(self) -> Counter[int]:
        """How many upstream requests this replica made for each job number."""
        seen: Counter[int] = Counter()
        for request in upstream_requests(self.upstream):
            found = re.search(r"job (\d+)", json.dumps(request["body"]))
            if found:
                seen[int(found.group(1))] += 1
        return seen

    def kill(self) -> None:
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.proc.wait(10)

    def stop(self) -> None:
        self.channel.close()
        self.process.stop(timeout=10)
        self.upstream_process.stop()


@pytest.fixture
def replicas(tmp_path: Path, database: str) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for index in range(2):
            started.append(Replica(tmp_path / f"replica{index}", database))
        yield started
    finally:
        for replica in started:
            replica.stop()


def wait_terminal(replica: Replica, ids: list[str], timeout: float) -> dict[str, response_pb2.Response]:
    deadline = time.monotonic() + timeout
    while True:
        responses = {i: replica.get(i) for i in ids}
        pending = [i for i, r in responses.items() if r.status in (QUEUED, IN_PROGRESS)]
        if not pending:
            return responses
        states = Counter(response_pb2.ResponseStatus.Name(r.status) for r in responses.values())
        assert time.monotonic() < deadline, f"{len(pending)} jobs still not done after {timeout}s: {states}"
        time.sleep(0.2)


def job_rows(database: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute("SELECT response_id, state, worker_id FROM jobs").fetchall()


def event_counts(database: str, ids: list[str]) -> dict[str, int]:
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute("SELECT response_id, count(*) FROM stream_events WHERE response_id = ANY(%s)"
                            " GROUP BY response_id", (ids,)).fetchall()
    return {i: 0 for i in ids} | {row[0]: int(row[1]) for row in rows}


def test_fifty_jobs_on_two_replicas_each_run_once(replicas: list[Replica], database: str) -> None:
    ids = [replicas[n % 2].submit(f"job {n}", "fake/slow-200") for n in range(50)]
    responses = wait_terminal(replicas[0], ids, timeout=60)
    assert {r.status for r in responses.values()} == {COMPLETED}
    for n, response_id in enumerate(ids):
        assert responses[response_id].output_text == f"echo: job {n}"
    # Each job reached an upstream exactly once, and both replicas did some of the work.
    seen = [replica.jobs_seen() for replica in replicas]
    assert seen[0] + seen[1] == Counter(range(50)), "every job runs exactly once"
    assert seen[0] and seen[1], f"one replica did everything: {len(seen[0])} / {len(seen[1])}"
    # Every persisted stream is whole, whichever replica ran it and whichever replica serves it.
    for n, response_id in enumerate(ids):
        final = check_stream(replicas[(n + 1) % 2].events(response_id))
        assert final["status"] == "completed" and final["output_text"] == f"echo: job {n}"
    assert job_rows(database) == []


def test_a_killed_replica_leaves_no_job_stuck(tmp_path: Path, database: str) -> None:
    """Replica A runs four jobs alone; it is SIGKILLed while two are streaming and two wait for their first token.
    Replica B, started then, takes the jobs over when A's leases expire: it runs the two that had not started again,
    and fails the two whose stream had started (running them again would mix two runs in one stream)."""
    first = Replica(tmp_path / "a", database)
    second: Replica | None = None
    try:
        words = " ".join(f"w{i}" for i in range(150))  # streams for ~5 s
        streaming = [first.submit(f"job {n} {words}", "fake/slow-300") for n in range(2)]
        waiting = [first.submit(f"job {n}", "fake/slow-3000") for n in range(2, 4)]
        ids = streaming + waiting
        deadline = time.monotonic() + 10
        while True:
            counts = event_counts(database, ids)
            if all(counts[i] > 4 for i in streaming):
                break
            assert time.monotonic() < deadline, f"the streams did not start: {counts}"
            time.sleep(0.05)
        assert all(counts[i] == 2 for i in waiting), counts  # created and queued: no token yet
        assert len(job_rows(database)) == 4
        first.kill()
        killed_at = time.monotonic()
        assert set(first.jobs_seen()) == {0, 1, 2, 3}

        second = Replica(tmp_path / "b", database)
        # Nothing happens before A's leases expire; then B takes over. Bounded: lease + a run of slow-3000.
        responses = wait_terminal(second, ids, timeout=LEASE_SECONDS + 20)
        assert time.monotonic() - killed_at >= LEASE_SECONDS - 1, "the jobs were taken while A's lease held"
        for response_id in waiting:
            assert responses[response_id].status == COMPLETED
            final = check_stream(second.events(response_id))
            assert final["status"] == "completed"
        for response_id in streaming:
            response = responses[response_id]
            assert response.status == FAILED and response.error.code == "server_error", response
            events = second.events(response_id)
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
            assert events[-1]["response"]["status"] == "failed"
        # B ran only the jobs that had not started; none is left to any worker.
        assert set(second.jobs_seen()) == {2, 3}
        assert job_rows(database) == []
    finally:
        first.stop()
        if second is not None:
            second.stop()
