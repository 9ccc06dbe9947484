"""WebSocket mode on /v1/responses, directly on the edge and through Envoy: `response.create` frames in, the
same events as SSE out, one response at a time, the connection-local cache for `store: false` chains, error
frames, and (in-process, with a short limit) the connection cap."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from switchboard.edge.app import Edge
from switchboard.edge.websocket import websocket_endpoint
from tests import openapi
from tests.e2e.stack import API_KEY, Stack, start_stack, upstream_requests
from tests.e2e.test_http import sse_events
from tests.streams import TERMINAL, check_stream

pytestmark = pytest.mark.timeout(60)
AUTH = {"authorization": f"Bearer {API_KEY}"}
Frame = dict[str, Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    """Overrides the session stack: no local model, so it starts in a second."""
    started = start_stack(Path(tmp_path_factory.mktemp("websocket")), upstream, local_model=False)
    yield started
    started.stop()


@pytest.fixture
def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/v1/responses"


@contextlib.contextmanager
def session(url: str, headers: dict[str, str] | None = None) -> Iterator[ClientConnection]:
    with connect(url, additional_headers=AUTH if headers is None else headers, open_timeout=10,
                 close_timeout=5) as ws:
        yield ws


def create(ws: ClientConnection, **body: Any) -> None:
    frame = {"type": "response.create", **body}
    if not {"stream", "stream_options", "background"} & set(frame):  # the fields the transport forbids
        openapi.validate_schema("WebSocketResponseCreateEvent", frame)
    ws.send(json.dumps(frame))


def receive(ws: ClientConnection, timeout: float = 15.0) -> Frame:
    frame: Frame = json.loads(ws.recv(timeout=timeout))
    return frame


def one_response(ws: ClientConnection) -> list[Frame]:
    """The frames of one response, up to its terminal event or an error frame."""
    frames: list[Frame] = []
    while True:
        frame = receive(ws)
        frames.append(frame)
        if frame["type"] in TERMINAL or (frame["type"] == "error" and "status" in frame):
            return frames


def completed(ws: ClientConnection, **body: Any) -> Frame:
    """Sends a `response.create` and checks its events as a stream; returns the final response."""
    create(ws, **body)
    frames = one_response(ws)
    final = check_stream(frames)
    assert final["status"] == "completed", final
    return final


def error_frame(ws: ClientConnection, status: int, code: str, param: str | None = None) -> Frame:
    frame = receive(ws)
    openapi.validate_schema("WebSocketErrorEvent", frame)
    assert frame["type"] == "error" and frame["status"] == status and frame["error"]["code"] == code, frame
    if param is not None:
        assert frame["error"]["param"] == param, frame
    return frame


def marker(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def sent(stack: Stack, mark: str) -> list[list[tuple[str, str]]]:
    """(role, content) of the messages of each upstream request that carried ``mark``."""
    return [[(m["role"], m.get("content") or "") for m in r["body"]["messages"]]
            for r in upstream_requests(stack.upstream) if mark in json.dumps(r["body"])]


def test_events_are_the_sse_events(ws_url: str, base_url: str) -> None:
    with session(ws_url) as ws:
        create(ws, model="fake/echo", input="hello websocket", metadata={"k": "v"})
        frames = one_response(ws)
    final = check_stream(frames)
    assert final["output_text"] == "echo: hello websocket" and final["metadata"] == {"k": "v"}
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as http:
        with http.stream("POST", "/v1/responses", json={"model": "fake/echo", "input": "hello websocket",
                                                        "stream": True}) as reply:
            events, _ = sse_events(reply)
        # Stored by default, as over HTTP.
        assert http.get(f"/v1/responses/{final['id']}").json()["output_text"] == "echo: hello websocket"
    assert [f["type"] for f in frames] == [e["type"] for e in events]


def test_sequential_responses_on_one_connection(ws_url: str) -> None:
    with session(ws_url) as ws:
        # Two frames at once: the second response starts only after the first one's terminal event.
        create(ws, model="fake/slow-300", input="first one")
        create(ws, model="fake/echo", input="second one")
        first, second = one_response(ws), one_response(ws)
        assert check_stream(first)["output_text"] == "echo: first one"
        assert check_stream(second)["output_text"] == "echo: second one"
        assert first[-1]["response"]["id"] != second[-1]["response"]["id"]
        assert second[0]["sequence_number"] == 0
        assert completed(ws, model="fake/echo", input="third one")["output_text"] == "echo: third one"


def test_store_false_chain_lives_in_the_connection(ws_url: str, base_url: str, stack: Stack) -> None:
    mark = marker("ws-chain")
    with session(ws_url) as ws:
        one = completed(ws, model="fake/echo", input=f"a {mark}", store=False)
        two = completed(ws, model="fake/echo", input="b", store=False, previous_response_id=one["id"])
        three = completed(ws, model="fake/echo", input="c", store=False, previous_response_id=two["id"])
        assert (one["store"], two["previous_response_id"], three["output_text"]) == (False, one["id"], "echo: c")
        # A stored response continues from the cached chain too.
        stored = completed(ws, model="fake/echo", input="d", previous_response_id=three["id"])
    context = [("user", f"a {mark}"), ("assistant", f"echo: a {mark}"), ("user", "b"), ("assistant", "echo: b"),
               ("user", "c"), ("assistant", "echo: c"), ("user", "d")]
    assert sent(stack, mark)[-1] == context

    with session(ws_url) as ws:
        # The cache belongs to the connection: another one does not know the id ...
        create(ws, model="fake/echo", input="e", store=False, previous_response_id=two["id"])
        error_frame(ws, 400, "previous_response_not_found", "previous_response_id")
        # ... and stays usable; a stored response is known everywhere.
        assert completed(ws, model="fake/echo", input="f", previous_response_id=stored["id"])["output_text"] == \
            "echo: f"
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as http:
        reply = http.post("/v1/responses", json={"input": "g", "previous_response_id": one["id"]})
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "previous_response_not_found"


@pytest.mark.parametrize("failing", ["fake/fail-400", "fake/drop-mid-stream"])
def test_a_failed_continuation_evicts_its_id(ws_url: str, failing: str) -> None:
    with session(ws_url) as ws:
        one = completed(ws, model="fake/echo", input="cached", store=False)
        other = completed(ws, model="fake/echo", input="kept", store=False)
        create(ws, model=failing, input="this fails", store=False, previous_response_id=one["id"])
        frames = one_response(ws)
        if failing == "fake/fail-400":  # refused before the first event: an error frame
            assert len(frames) == 1
            openapi.validate_schema("WebSocketErrorEvent", frames[0])
        else:  # failed mid-stream: the stream ends with response.failed
            assert check_stream(frames)["status"] == "failed"
        create(ws, model="fake/echo", input="again", store=False, previous_response_id=one["id"])
        error_frame(ws, 400, "previous_response_not_found")
        # Only the failed continuation's id is gone.
        assert completed(ws, model="fake/echo", input="on", store=False,
                         previous_response_id=other["id"])["output_text"] == "echo: on"


def test_stream_and_background_are_refused(ws_url: str) -> None:
    with session(ws_url) as ws:
        for field, value in (("stream", True), ("stream", False), ("background", True), ("background", False)):
            create(ws, model="fake/echo", input="x", **{field: value})
            error_frame(ws, 400, "invalid_request", field)
        create(ws, model="fake/echo", input="x", stream_options={"include_obfuscation": False})
        error_frame(ws, 400, "invalid_request", "stream_options")
        assert completed(ws, model="fake/echo", input="still open")["output_text"] == "echo: still open"


def test_bad_frames_get_error_frames_and_the_connection_stays(ws_url: str) -> None:
    with session(ws_url) as ws:
        ws.send("{not json")
        error_frame(ws, 400, "invalid_request")
        ws.send(json.dumps({"type": "response.cancel"}))
        error_frame(ws, 400, "invalid_request", "type")
        ws.send(json.dumps({"type": "response.create", "model": "fake/echo", "input": 42}))
        error_frame(ws, 400, "invalid_request", "input")
        create(ws, model="fake/echo", input="x", previous_response_id="resp_unknown")
        error_frame(ws, 400, "previous_response_not_found", "previous_response_id")
        create(ws, model="nowhere/model", input="x")
        error_frame(ws, 404, "model_not_found", "model")
        assert completed(ws, model="fake/echo", input="after errors")["output_text"] == "echo: after errors"


@pytest.mark.parametrize(("headers", "code"), [({}, "missing_api_key"),
                                                ({"authorization": "Bearer sk-wrong"}, "invalid_api_key")])
def test_without_a_valid_key_the_connection_gets_401(ws_url: str, headers: dict[str, str], code: str) -> None:
    with session(ws_url, headers) as ws:
        # The service refuses the session as it opens: the error frame comes without a request.
        error_frame(ws, 401, code)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


# ------------------------------------------------------------------ the connection cap, in-process


def test_the_connection_cap_closes_with_an_error_frame(stack: Stack) -> None:
    """`websocket_endpoint(edge, limit=...)` with a limit of a second, around the real service."""
    edge = Edge(stack.grpc, max_body_bytes=1 << 20, request_timeout=30, forward_trace_headers=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await edge.open()
        try:
            yield
        finally:
            await edge.close()

    app = Starlette(routes=[WebSocketRoute("/v1/responses", websocket_endpoint(edge, limit=1.0))], lifespan=lifespan)
    with TestClient(app) as client, client.websocket_connect("/v1/responses", headers=AUTH) as ws:
        opened = time.monotonic()
        ws.send_json({"type": "response.create", "model": "fake/echo", "input": "before the cap"})
        frames: list[Frame] = []
        while not frames or frames[-1]["type"] not in TERMINAL:
            frames.append(ws.receive_json())
        assert check_stream(frames)["output_text"] == "echo: before the cap"
        frame = ws.receive_json()
        assert time.monotonic() - opened >= 0.9
        openapi.validate_schema("WebSocketErrorEvent", frame)
        assert frame["status"] == 400 and frame["error"]["code"] == "websocket_connection_limit_reached"
        message = ws.receive()
        assert message["type"] == "websocket.close" and message["code"] == 1000
