"""Framework floors: what the gateway's building blocks cost with no Switchboard code in them.

    python -m bench.floor [--requests 2000]

Measures, sequentially (concurrency 1) with the same clients as bench.latency, p50 latency and the CPU per request
of each process for:

* ``uvicorn+starlette``: a Starlette app on uvicorn (httptools, uvloop), as the edge runs, that answers
  POST /v1/responses with a canned JSON body — the edge's HTTP floor;
* ``grpc.aio``: a grpc.aio server (uvloop) whose CreateResponse returns a canned Response, called by a grpc.aio
  client — the floor of the edge -> service hop, both ends (the edge's client side and the service's server side);
* ``httpx``: httpx.AsyncClient (keep-alive pool, as the service's upstream client) POSTing to the fake upstream,
  against the raw keep-alive client on the same upstream — what the service's upstream client costs.

Compare with bench.latency's CPU table to see how much of the edge and the service is framework.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import orjson
import uvloop

from bench.harness import RawHttp, cpu_seconds, percentile, self_cpu
from switchboard.responses.v1 import events_pb2, response_pb2, responses_service_pb2, responses_service_pb2_grpc
from tests.e2e.stack import ROOT, start_upstream

CANNED = response_pb2.Response(id="resp_0123456789abcdef", object="response", output_text="echo: hello")
JSON_BODY = orjson.dumps({"id": "resp_0123456789abcdef", "object": "response", "output_text": "echo: hello"})


# ---------------------------------------------------------------- servers (run in a child process)

STREAM_EVENTS = 2000


class _Servicer(responses_service_pb2_grpc.ResponsesServicer):
    async def CreateResponse(self, request: object, context: object) -> response_pb2.Response:  # noqa: N802
        return CANNED

    async def StreamResponse(self, request: object, context: object) -> AsyncIterator[events_pb2.StreamEvent]:  # noqa: N802
        for i in range(STREAM_EVENTS):
            yield events_pb2.StreamEvent(sequence_number=i, output_text_delta=events_pb2.OutputTextDeltaEvent(
                item_id="msg_0123456789abcdef", delta="tok "))


async def _serve_grpc(port: int) -> None:
    server = grpc.aio.server()
    responses_service_pb2_grpc.add_ResponsesServicer_to_server(_Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _serve_http(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def create(request: Request) -> Response:
        await request.body()
        return Response(JSON_BODY, media_type="application/json")

    app = Starlette(routes=[Route("/v1/responses", create, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", lifespan="off",
                            access_log=False, log_level="warning", ws="none")
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        await task

    uvloop.run(run())


# ---------------------------------------------------------------- measurement

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(kind: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", "--serve", kind, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    if "READY" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError(f"the {kind} floor server did not start")
    return proc


async def _timed(call: Callable[[], Awaitable[None]], count: int, warmup: int, pid: int | None,
                 ) -> tuple[float, float, float]:
    """p50 ms, client CPU ms/request, server CPU ms/request."""
    for _ in range(warmup):
        await call()
    server0, client0 = cpu_seconds(pid) if pid else 0.0, self_cpu()
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    server = (cpu_seconds(pid) - server0) if pid else 0.0
    client = self_cpu() - client0
    return 1000 * percentile(latencies, 50), 1000 * client / count, 1000 * server / count


async def measure(args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    rows: list[tuple[str, float, float, float]] = []
    n, warm = args.requests, args.requests // 4
    # uvicorn + starlette
    port = _free_port()
    proc = _start("http", port)
    try:
        conn = await RawHttp.connect(f"http://127.0.0.1:{port}")
        request = RawHttp.build(f"http://127.0.0.1:{port}", "/v1/responses", b'{"input":"hello"}')

        async def http_call() -> None:
            status, _ = await conn.request(request)
            assert status == 200

        rows.append(("uvicorn+starlette (raw client)", *await _timed(http_call, n, warm, proc.pid)))
        await conn.close()
    finally:
        _stop(proc)
    # grpc.aio both ends
    port = _free_port()
    proc = _start("grpc", port)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        rpc = responses_service_pb2_grpc.ResponsesStub(channel)
        message = responses_service_pb2.CreateResponseRequest(
            model="fake/echo", input=responses_service_pb2.Input(text="hello"))
        metadata = (("authorization", "Bearer x"),)

        async def grpc_call() -> None:
            await rpc.CreateResponse(message, metadata=metadata, timeout=10)

        rows.append(("grpc.aio unary (no-op servicer)", *await _timed(grpc_call, n, warm, proc.pid)))

        async def stream_call() -> None:
            count = 0
            async for _ in rpc.StreamResponse(message, metadata=metadata, timeout=30):
                count += 1
            assert count == STREAM_EVENTS

        streams = max(2, n // 200)
        p50, client, server = await _timed(stream_call, streams, 2, proc.pid)
        # Per message rather than per call: ms per stream / messages * 1000 = microseconds per message.
        rows.append((f"grpc.aio server stream, us per message ({STREAM_EVENTS}/stream)", 1000 * p50 / STREAM_EVENTS,
                     1000 * client / STREAM_EVENTS, 1000 * server / STREAM_EVENTS))
        await channel.close()
    finally:
        _stop(proc)
    # httpx vs raw against the fake upstream
    upstream_process, upstream = start_upstream()
    try:
        body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hello"}]})
        pid = upstream_process.proc.pid
        url = upstream + "/v1/chat/completions"
        headers = {"content-type": "application/json"}
        conn = await RawHttp.connect(upstream)
        request = RawHttp.build(upstream, "/v1/chat/completions", body)

        async def raw_call() -> None:
            status, _ = await conn.request(request)
            assert status == 200

        rows.append(("fake upstream, raw client", *await _timed(raw_call, n, warm, pid)))
        await conn.close()
        for pool in (1, 16):
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits, timeout=10) as client:
                # Open `pool` keep-alive connections first, as a busy gateway's pool has them.
                await asyncio.gather(*(client.post(url, content=body, headers=headers) for _ in range(pool)))

                async def httpx_call(client: httpx.AsyncClient = client) -> None:
                    response = await client.post(url, content=body, headers=headers)
                    assert response.status_code == 200

                rows.append((f"fake upstream, httpx ({pool} pooled conn.)", *await _timed(httpx_call, n, warm, pid)))
    finally:
        upstream_process.stop()
    return rows


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--serve", choices=("grpc", "http"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "grpc":
        uvloop.run(_serve_grpc(args.port))
        return 0
    if args.serve == "http":
        _serve_http(args.port)
        return 0
    rows = uvloop.run(measure(args))
    print(f"\nFramework floors, {args.requests} sequential requests each: p50 and CPU per request in ms "
          "(the stream row: per message, in microseconds)")
    print(f"{'what':<50} {'p50':>7} {'client CPU':>11} {'server CPU':>11}")
    for name, p50, client, server in rows:
        print(f"{name:<50} {p50:7.3f} {client:11.3f} {server:11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
