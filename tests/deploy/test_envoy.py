"""deploy/envoy/envoy.yaml with the real Envoy binary: it validates, and real traffic passes through it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import uvicorn
import websockets
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from switchboard.cli.envoy import EnvoyAddresses, EnvoyError, EnvoyProcess, render_config
from tests.processes import launcher

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"
TEMPLATE = TEMPLATE_PATH.read_text()
GATE_TIMEOUT = 10.0  # only reached when the test is failing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local(port: int) -> tuple[str, int]:
    return ("127.0.0.1", port)


# --- a throwaway upstream app standing in for the edge --------------------------------------------


@dataclass
class Stream:
    """Hand-offs between one SSE response in the app thread and the test reading it through Envoy."""

    first_received: threading.Event = field(default_factory=threading.Event)  # client -> server
    release: threading.Event = field(default_factory=threading.Event)  # client -> server
    fifth_sent: threading.Event = field(default_factory=threading.Event)  # server -> client


STREAMS: dict[str, Stream] = {}


async def wait_for(event: threading.Event) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def sse(request: Request) -> Response:
    gate = STREAMS[request.query_params["key"]]

    async def events() -> AsyncIterator[bytes]:
        for n in range(1, 6):
            if n > 1:
                await asyncio.sleep(0.2)
            if n == 2:
                await wait_for(gate.release)
            if n == 5:
                await wait_for(gate.first_received)
                gate.fifth_sent.set()
            yield f"event: tick\ndata: {n}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


async def echo_headers(request: Request) -> Response:
    return JSONResponse(dict(request.headers))


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def ws_echo(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text("echo: " + await ws.receive_text())
    await ws.close()


APP = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/v1/headers", echo_headers),
        Route("/v1/sse", sse, methods=["POST"]),
        WebSocketRoute("/v1/ws", ws_echo),
    ]
)


@pytest.fixture(scope="module")
def edge_port() -> Iterator[int]:
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=free_port(), log_level="warning", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield config.port
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def grpc_service() -> Iterator[tuple[int, health.HealthServicer]]:
    """A gRPC server with only grpc.health.v1, standing in for the Switchboard service."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(grace=None).wait()


@dataclass
class Stack:
    envoy: EnvoyProcess
    public: str
    grpc_internal: str


@pytest_asyncio.fixture
async def stack(edge_port: int, grpc_service: tuple[int, health.HealthServicer]) -> AsyncIterator[Stack]:
    public, internal = free_port(), free_port()
    addrs = EnvoyAddresses(
        public=local(public),
        edge=local(edge_port),
        service=local(grpc_service[0]),
        admin=local(free_port()),
        grpc_internal=local(internal),
    )
    envoy = EnvoyProcess(render_config(TEMPLATE, addrs), drain_time_s=2, launcher=launcher())
    await envoy.start()
    try:
        yield Stack(envoy, f"http://127.0.0.1:{public}", f"127.0.0.1:{internal}")
    finally:
        await envoy.stop(drain=False)


# --- configuration --------------------------------------------------------------------------------


def test_production_config_validates() -> None:
    EnvoyProcess.validate(TEMPLATE)


def test_rendered_config_uses_the_given_addresses_and_validates() -> None:
    ports = [free_port() for _ in range(6)]
    addrs = EnvoyAddresses(
        public=local(ports[0]),
        edge=local(ports[1]),
        service=local(ports[2]),
        admin=local(ports[3]),
        grpc_internal=local(ports[4]),
        services=[local(ports[2]), local(ports[5])],
        otel_collector=local(4317),
    )
    text = render_config(TEMPLATE, addrs)
    EnvoyProcess.validate(text)
    doc = yaml.safe_load(text)
    resources = doc["static_resources"]
    listeners = {x["name"]: x["address"]["socket_address"]["port_value"] for x in resources["listeners"]}
    assert listeners == {"public": ports[0], "grpc_internal": ports[4]}
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": ports[3]}
    endpoints = {
        c["name"]: [e["endpoint"]["address"]["socket_address"]["port_value"] for e in c_eps["lb_endpoints"]]
        for c in resources["clusters"]
        for c_eps in c["load_assignment"]["endpoints"]
    }
    assert endpoints == {"edge": [ports[1]], "service": [ports[2], ports[5]], "otel_collector": [4317]}


def test_without_grpc_internal_or_collector_the_listener_and_tracer_are_dropped() -> None:
    addrs = EnvoyAddresses(public=local(10000), edge=local(8080), service=local(50051), admin=local(9901))
    text = render_config(TEMPLATE, addrs)
    EnvoyProcess.validate(text)
    resources = yaml.safe_load(text)["static_resources"]
    assert [x["name"] for x in resources["listeners"]] == ["public"]
    assert [c["name"] for c in resources["clusters"]] == ["edge", "service"]
    assert "tracing" not in text and "otel_collector" not in text


def test_validate_reports_envoys_message() -> None:
    doc = yaml.safe_load(TEMPLATE)
    doc["static_resources"]["clusters"] = [
        c for c in doc["static_resources"]["clusters"] if c["name"] != "edge"
    ]
    with pytest.raises(EnvoyError, match="edge"):
        EnvoyProcess.validate(yaml.safe_dump(doc))


def test_streaming_routes_are_never_buffered_or_cut() -> None:
    doc = yaml.safe_load(TEMPLATE)
    for listener in doc["static_resources"]["listeners"]:
        hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
        filters = [f["name"] for f in hcm["http_filters"]]
        assert not [f for f in filters if "buffer" in f or "compressor" in f], filters
        assert hcm["stream_idle_timeout"] != "0s"
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            if route["match"].get("prefix") in ("/v1/", "/") and "route" in route:
                assert route["route"]["timeout"] == "0s"
                assert "reset" not in route["route"]["retry_policy"]["retry_on"].split(",")


# --- real traffic ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sse_arrives_incrementally_through_envoy(stack: Stack) -> None:
    key, gate = uuid.uuid4().hex, Stream()
    gate.release.set()
    STREAMS[key] = gate
    data: list[str] = []
    async with httpx.AsyncClient(base_url=stack.public, timeout=30) as client:
        async with client.stream("POST", "/v1/sse", params={"key": key}, json={"stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
                    if len(data) == 1:
                        # The app holds event 5 until we hold event 1: a buffering proxy delivers nothing.
                        assert not gate.fifth_sent.is_set()
                        gate.first_received.set()
    assert data == ["1", "2", "3", "4", "5"]


@pytest.mark.asyncio
async def test_plain_get_and_request_id_reach_the_app(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.public, timeout=10) as client:
        assert (await client.get("/healthz")).text == "ok"
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/livez")).text == "live"
        generated = (await client.get("/v1/headers")).json()
        assert uuid.UUID(generated["x-request-id"])
        mine = (await client.get("/v1/headers", headers={"x-request-id": "req-abc"})).json()
        assert mine["x-request-id"] == "req-abc"
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        passed = (await client.get("/v1/headers", headers={"traceparent": traceparent})).json()
        assert passed["traceparent"] == traceparent


@pytest.mark.asyncio
async def test_envoys_own_failures_answer_the_error_json(grpc_service: tuple[int, health.HealthServicer]) -> None:
    public = free_port()
    addrs = EnvoyAddresses(public=local(public), edge=local(free_port()), service=local(grpc_service[0]),
                           admin=local(free_port()), grpc_internal=None)
    envoy = EnvoyProcess(render_config(TEMPLATE, addrs), drain_time_s=2)
    await envoy.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            reply = await client.post(f"http://127.0.0.1:{public}/v1/responses", json={"input": "x"})
            live = await client.get(f"http://127.0.0.1:{public}/livez")
    finally:
        await envoy.stop(drain=False)
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["param"] is None and error["message"] and error["code"]
    assert live.text == "live"  # direct responses keep their own body


async def test_oversized_body_is_refused_by_envoy(stack: Stack) -> None:
    # Only the headers are sent: Envoy must answer from Content-Length alone, without reading the body.
    host, port = stack.public.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    headers = dict(line.lower().split(b": ", 1) for line in head.strip().split(b"\r\n")[1:])
    body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), timeout=10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_websocket_upgrade_through_envoy(stack: Stack) -> None:
    url = stack.public.replace("http://", "ws://") + "/v1/ws"
    async with websockets.connect(url, open_timeout=10) as ws:
        await ws.send("hi")
        assert await ws.recv() == "echo: hi"


@pytest.mark.asyncio
async def test_grpc_and_grpc_web_reach_the_service(stack: Stack, grpc_service: Any) -> None:
    _, servicer = grpc_service
    async with grpc.aio.insecure_channel(stack.grpc_internal) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Server streaming: the second message is only sent after we have read the first.
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="probe"), timeout=10)
        servicer.set("probe", health_pb2.HealthCheckResponse.SERVING)
        first = await watch.read()
        servicer.set("probe", health_pb2.HealthCheckResponse.NOT_SERVING)
        second = await watch.read()
        watch.cancel()
    assert [first.status, second.status] == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    # gRPC-Web over HTTP/1.1, as a browser sends it: an empty request message in one data frame.
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"http://{stack.grpc_internal}/grpc.health.v1.Health/Check",
            content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert response.status_code == 200
    assert response.content.startswith(b"\x00\x00\x00\x00\x02\x08\x01")  # SERVING
    assert b"grpc-status:0" in response.content


@pytest.mark.asyncio
async def test_drain_lets_an_in_flight_stream_finish(stack: Stack) -> None:
    key, gate = uuid.uuid4().hex, Stream()
    gate.first_received.set()
    STREAMS[key] = gate
    admin = stack.envoy.admin_url
    data: list[str] = []
    async with httpx.AsyncClient(base_url=stack.public, timeout=30) as client:
        async with client.stream("POST", "/v1/sse", params={"key": key}) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
                    break
            stopping = asyncio.create_task(stack.envoy.stop(drain=True, timeout=20))
            async with httpx.AsyncClient(timeout=2) as probe:
                while (await probe.get(f"{admin}/ready")).status_code == 200:
                    await asyncio.sleep(0.02)
                # Readiness on the public listener (what kubelet probes) fails too, liveness does not.
                assert (await probe.get(f"{stack.public}/ready")).status_code == 503
                assert (await probe.get(f"{stack.public}/livez")).status_code == 200
            gate.release.set()  # the stream resumes only once Envoy is draining
            async for line in lines:
                if line.startswith("data: "):
                    data.append(line.removeprefix("data: "))
    await stopping
    assert data == ["1", "2", "3", "4", "5"]
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=stack.public, timeout=2) as client:
            await client.get("/healthz")


@pytest.mark.asyncio
async def test_start_fails_with_envoys_message_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addrs = EnvoyAddresses(
            public=local(port), edge=local(free_port()), service=local(free_port()), admin=local(free_port())
        )
        envoy = EnvoyProcess(render_config(TEMPLATE, addrs), launcher=launcher())
        with pytest.raises(EnvoyError, match="(?i)address already in use"):
            await envoy.start(timeout=15)
