"""Production behaviour of deploy/envoy/envoy.yaml with the real Envoy binary and real Switchboard processes:
tracing into a real OTLP collector (rotel), ejection of a killed service replica, and a SIGTERM drain."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import rotel
import yaml

from switchboard.cli.envoy import EnvoyAddresses, EnvoyProcess, otlp_grpc_address, render_config
from switchboard.cli.supervisor import envoy_config
from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc
from switchboard.shared.config.settings import from_dict
from tests.e2e.stack import API_KEY, Process, free_port, start_stack, start_upstream, write_config
from tests.processes import launcher

TEMPLATE = (Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml").read_text()
ROTEL_AGENT = Path(rotel.__file__).resolve().parent / "rotel-agent"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    process, url = start_upstream()
    yield url
    process.stop()


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


# --- 1. one trace across Envoy, the edge and the service, received by a real collector ------------------------


@dataclass(frozen=True)
class LoggedSpan:
    service: str
    name: str
    trace_id: str
    parent_id: str
    span_id: str


_FIELD = re.compile(r"^\s+(Trace ID|Parent ID|ID|Name)\s+:\s?(.*)$")
_SERVICE = re.compile(r"^\s+-> service\.name: Str\((.*)\)$")


def parse_rotel_spans(lines: list[str]) -> list[LoggedSpan]:
    """Spans from rotel's `--debug-log traces --debug-log-verbosity detailed` output (the OpenTelemetry
    Collector's debug exporter format): `ResourceSpans #n`, its resource attributes, then `Span #n` blocks.
    Metric blocks (`ResourceMetrics #n`, from `--debug-log metrics`) come in between and are skipped."""
    spans: list[LoggedSpan] = []
    service = ""
    in_spans = False
    fields: dict[str, str] = {}

    def flush() -> None:
        if in_spans and "Trace ID" in fields and "ID" in fields:
            spans.append(LoggedSpan(service, fields.get("Name", ""), fields["Trace ID"], fields.get("Parent ID", ""),
                                    fields["ID"]))
        fields.clear()

    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("Resource"):  # ResourceSpans / ResourceMetrics / ResourceLogs #n and their headers
            if line.startswith(("ResourceSpans #", "ResourceMetrics #", "ResourceLogs #")):
                flush()
                in_spans, service = line.startswith("ResourceSpans #"), ""
        elif line.startswith("Span #"):
            flush()
        elif in_spans and not fields and (match := _SERVICE.match(line)):
            service = match.group(1)
        elif in_spans and (match := _FIELD.match(line)):
            fields[match.group(1)] = match.group(2).strip()
    flush()
    return spans


_ROTEL_SAMPLE = """\
ResourceSpans #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(switchboard-envoy)
     -> telemetry.sdk.language: Str(cpp)
ScopeSpans #0
InstrumentationScope envoy 1.40.0
Span #0
    Trace ID       : 0af7651916cd43dd8448eb211c80319c
    Parent ID      : b7ad6b7169203331
    ID             : d794a620fa9b49f2
    Name           : ingress
    Kind           : SPAN_KIND_SERVER
Attributes:
     -> node_id: Str(switchboard-envoy)
ResourceMetrics #0
Resource attributes:
     -> service.name: Str(switchboard-service)
Metric #0
Descriptor:
     -> Name: switchboard.requests
Exemplar #0
     -> Trace ID: 0af7651916cd43dd8448eb211c80319c
ResourceSpans #0
Resource attributes:
     -> service.name: Str(switchboard-edge)
Span #0
    Trace ID       : 0af7651916cd43dd8448eb211c80319c
    Parent ID      : d794a620fa9b49f2
    ID             : 90bde32040c5e94a
    Name           : POST /v1/responses
"""


def test_rotel_debug_log_parser_keeps_each_span_with_its_resource() -> None:
    spans = parse_rotel_spans(_ROTEL_SAMPLE.splitlines(keepends=True))
    assert spans == [
        LoggedSpan("switchboard-envoy", "ingress", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
                   "d794a620fa9b49f2"),
        LoggedSpan("switchboard-edge", "POST /v1/responses", "0af7651916cd43dd8448eb211c80319c", "d794a620fa9b49f2",
                   "90bde32040c5e94a"),
    ]
    assert trace_problems(spans, "b7ad6b7169203331") == ["no service span is a child of the edge's"]


@pytest.fixture(scope="module")
def rotel_collector() -> Iterator[tuple[Process, str]]:
    grpc_port, http_port = free_port(), free_port()
    process = Process([str(ROTEL_AGENT), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
                       "--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "blackhole",
                       "--debug-log", "traces", "--debug-log", "metrics", "--debug-log-verbosity", "detailed",
                       "--pid-file", f"/tmp/rotel-{grpc_port}.pid", "--log-file", f"/tmp/rotel-{grpc_port}.log"],
                      env={"NO_COLOR": "1"}, name="rotel")
    try:
        wait_port(grpc_port)
        yield process, f"http://127.0.0.1:{grpc_port}"
    finally:
        process.stop(signal.SIGINT, timeout=5)


def trace_problems(spans: list[LoggedSpan], parent: str) -> list[str]:
    """What is still missing from the chain client -> Envoy -> edge -> service (spans arrive in batches)."""
    by_id = {s.span_id: s for s in spans}

    def parents(service: str) -> set[str]:
        return {by_id[s.parent_id].service if s.parent_id in by_id else s.parent_id
                for s in spans if s.service == service}

    problems = []
    if parent not in parents("switchboard-envoy"):
        problems.append("no Envoy span continues the client's trace")
    if "switchboard-envoy" not in parents("switchboard-edge"):
        problems.append("no edge span is a child of Envoy's")
    if "switchboard-edge" not in parents("switchboard-service"):
        problems.append("no service span is a child of the edge's")
    return problems


def test_envoy_edge_and_service_spans_share_one_trace_in_a_real_collector(
        tmp_path: Path, upstream: str, rotel_collector: tuple[Process, str]) -> None:
    rotel_process, endpoint = rotel_collector
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    stack = start_stack(tmp_path, upstream, env=env, local_model=False)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)

    def received() -> list[LoggedSpan]:
        return [s for s in parse_rotel_spans(list(rotel_process.output)) if s.trace_id == trace_id]

    try:
        reply = httpx.post(f"{stack.envoy}/v1/responses", json={"input": "trace me"}, timeout=30,
                           headers={**AUTH, "traceparent": f"00-{trace_id}-{parent}-01"})
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 20
        while trace_problems(received(), parent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        code = stack.stop()  # flushes whatever the processes still hold
    assert code == 0
    deadline = time.monotonic() + 5
    while (problems := trace_problems(spans := received(), parent)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not problems, (problems, [(s.service, s.name, s.span_id, s.parent_id) for s in spans])
    # The service's metrics go to the same collector over OTLP (the last export happens at shutdown).
    deadline = time.monotonic() + 10
    while not any("service.name: Str(switchboard-service)" in block and "-> Name: switchboard.requests" in block
                  for block in "".join(rotel_process.output).split("ResourceMetrics #")):
        assert time.monotonic() < deadline, "no switchboard.requests metric reached the collector"
        time.sleep(0.1)


# --- 2. two service replicas: a killed one is ejected and unary calls keep succeeding -------------------------


def start_service(tmp: Path, upstream: str) -> tuple[Process, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "switchboard.yaml"
    ports = write_config(config_path, upstream, envoy=False, local_model=False)
    process = Process([sys.executable, "-m", "switchboard.cli.main", "service", "--config", str(config_path)],
                      name=f"switchboard service {ports['grpc']}")
    try:
        process.wait_for("gRPC service listening", timeout=60)
    except RuntimeError:
        process.stop(signal.SIGKILL, timeout=5)
        raise
    return process, ports["grpc"]


SETTLE_S = 2.0


async def host_flags(admin_url: str, cluster: str) -> dict[str, str]:
    """`host:port` -> health flags of each host of `cluster`, from the admin /clusters page."""
    async with httpx.AsyncClient(timeout=2) as client:
        text = (await client.get(f"{admin_url}/clusters")).text
    flags = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
            flags[parts[1]] = parts[3]
    return flags


async def host_requests(admin_url: str, cluster: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=2) as client:
        text = (await client.get(f"{admin_url}/clusters")).text
    return {parts[1]: int(parts[3]) for parts in (line.split("::") for line in text.splitlines())
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "rq_total"}


async def test_a_killed_replica_is_ejected_without_failing_unary_calls(tmp_path: Path, upstream: str) -> None:
    replicas: list[tuple[Process, str]] = []
    envoy: EnvoyProcess | None = None
    try:
        for name in ("a", "b"):
            replicas.append(start_service(tmp_path / name, upstream))
        addresses = [(host, int(port)) for host, _, port in (grpc_addr.rpartition(":") for _, grpc_addr in replicas)]
        internal = free_port()
        envoy = EnvoyProcess(render_config(TEMPLATE, EnvoyAddresses(
            public=("127.0.0.1", free_port()), edge=("127.0.0.1", free_port()), service=addresses[0],
            services=addresses, admin=("127.0.0.1", free_port()), grpc_internal=("127.0.0.1", internal))),
            drain_time_s=1, launcher=launcher())
        await envoy.start()
        deadline = time.monotonic() + 20
        while set((await host_flags(envoy.admin_url, "service")).values()) != {"healthy"}:
            assert time.monotonic() < deadline, await host_flags(envoy.admin_url, "service")
            await asyncio.sleep(0.1)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{internal}") as channel:
            stub = responses_service_pb2_grpc.ResponsesStub(channel)
            request = responses_service_pb2.CreateResponseRequest(
                model="fake/echo", input=responses_service_pb2.Input(text="hello"), store=False)

            errors: list[str] = []

            async def call() -> grpc.StatusCode:
                try:
                    reply = await stub.CreateResponse(request, metadata=tuple(AUTH.items()), timeout=10)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    return error.code()
                assert reply.output_text == "echo: hello"
                return grpc.StatusCode.OK

            assert [await call() for _ in range(20)] == [grpc.StatusCode.OK] * 20
            served = await host_requests(envoy.admin_url, "service")
            assert all(count > 0 for count in served.values()), f"both replicas serve: {served}"

            victim, victim_addr = replicas[0]
            victim.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            window: list[tuple[float, grpc.StatusCode]] = []
            while (await host_flags(envoy.admin_url, "service")).get(victim_addr) == "healthy":
                assert time.monotonic() - killed_at < 20, "the killed replica was never ejected"
                window.append((time.monotonic() - killed_at, await call()))
            ejected_after = time.monotonic() - killed_at
            # Envoy's workers see an ejection up to about a second after the admin page does (the main thread
            # posts it); until then the dead replica is still picked, and the retries cover it.
            while time.monotonic() - killed_at < ejected_after + SETTLE_S:
                window.append((time.monotonic() - killed_at, await call()))
            after = [await call() for _ in range(50)]
        flags = await host_flags(envoy.admin_url, "service")
    finally:
        if envoy is not None:
            await envoy.stop(drain=False)
        for process, _ in replicas:
            process.stop(signal.SIGKILL, timeout=5)
    failed = [(round(at, 2), code.name) for at, code in window if code != grpc.StatusCode.OK]
    # Calls to the dead replica are refused and retried on the other one: failures are rare even in the window
    # (a call in flight at the kill, or one whose every retry drew the dead replica).
    assert len(failed) <= 2, (failed, errors)
    assert after == [grpc.StatusCode.OK] * 50, ([code.name for code in after], errors)
    assert flags[victim_addr] != "healthy" and ejected_after < 20, flags


# --- 3. SIGTERM on `switchboard serve`: Envoy drains and the in-flight SSE stream completes ---------------------


def test_sigterm_drain_lets_an_in_flight_sse_stream_finish(tmp_path: Path, upstream: str) -> None:
    stack = start_stack(tmp_path, upstream, local_model=False)
    events: list[str] = []
    data: list[str] = []
    first_delta = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        # slow-1000: the first token after 1 s, then one every 0.1 s; ~40 words take ~5 s in all.
        body = {"model": "fake/slow-1000", "stream": True, "input": " ".join(f"word{i}" for i in range(40))}
        try:
            with httpx.stream("POST", f"{stack.envoy}/v1/responses", json=body, headers=AUTH, timeout=30) as reply:
                assert reply.status_code == 200
                for line in reply.iter_lines():
                    if line.startswith("event: "):
                        events.append(line.removeprefix("event: "))
                        if events[-1] == "response.output_text.delta":
                            first_delta.set()
                    elif line.startswith("data: "):
                        data.append(line.removeprefix("data: "))
        except BaseException as error:  # reported by the test thread
            errors.append(error)
        finally:
            first_delta.set()

    reader = threading.Thread(target=read, daemon=True)
    try:
        reader.start()
        assert first_delta.wait(20)
        stack.process.proc.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        reader.join(30)
        assert not reader.is_alive(), "the stream did not end"
        assert not errors, errors
        code = stack.process.proc.wait(30)
        exited_after = time.monotonic() - signalled_at
    finally:
        stack.stop()
    assert "response.completed" in events, events[-5:]
    assert data[-1] == "[DONE]", data[-3:]
    completed = orjson.loads(data[-2])
    assert completed["type"] == "response.completed"
    assert completed["response"]["output"][0]["content"][0]["text"].count("word") == 40
    assert events.count("response.output_text.delta") > 10, "the stream was in flight when SIGTERM came"
    assert code == 0, "".join(stack.process.output)[-3000:]
    assert exited_after < 30


# --- where `switchboard serve` points Envoy's tracer ------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("http://collector.observability:4317", ("collector.observability", 4317)),
    ("http://127.0.0.1:14317/", ("127.0.0.1", 14317)),
    ("collector:4317", ("collector", 4317)),
    ("http://collector", ("collector", 4317)),
    ("https://collector:4317", None),
    ("", None),
])
def test_otlp_endpoint_to_envoy_collector_address(endpoint: str, expected: tuple[str, int] | None) -> None:
    assert otlp_grpc_address(endpoint) == expected


@pytest.mark.parametrize(("env", "envoy_otlp", "expected"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_SDK_DISABLED": "true"}, None, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317"}, None, ("a", 4317)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "b:55680"}, None,
     ("b", 55680)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://a:4317"}, None, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://a:4317"}, "plain-collector:4317", ("plain-collector", 4317)),
])
def test_serve_points_envoys_tracer_at_the_collector(
        env: dict[str, str], envoy_otlp: str | None, expected: tuple[str, int] | None) -> None:
    server = {"envoy": "127.0.0.1:10000", "envoy_grpc": "127.0.0.1:10001",
              **({"envoy_otlp": envoy_otlp} if envoy_otlp else {})}
    config = from_dict({"server": server}, env=env)
    rendered = envoy_config(config)
    clusters = {c["name"]: c for c in yaml.safe_load(rendered)["static_resources"]["clusters"]}
    if expected is None:
        assert "otel_collector" not in clusters and "tracing" not in rendered
    else:
        endpoint = clusters["otel_collector"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == expected
