"""Hung upstreams through the whole stack: one that never answers, one that stalls mid-stream, one that trickles a
byte at a time. Short limits are configured for the fake provider (first byte 1 s, idle 1 s, total 3 s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc
from tests.e2e.stack import API_KEY, Stack, start_stack
from tests.e2e.test_grpc import details

LIMITS = {"first_byte": 1, "idle": 1, "total": 3}


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    providers = [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1", "timeouts": LIMITS}]
    stack = start_stack(Path(tmp_path_factory.mktemp("hung")), upstream, envoy=False, local_model=False,
                        extra={"providers": providers, "routing": {"max_retries": 0}})
    yield stack
    stack.stop()


@pytest.fixture
def http(hung: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hung.http, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def stream_events(http: httpx.Client, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        if reply.status_code != 200:
            reply.read()
            return reply.status_code, [reply.json()]
        return 200, [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]


def test_unary_call_to_an_upstream_that_never_answers_is_a_504(hung: Stack) -> None:
    with openai.OpenAI(base_url=f"{hung.http}/v1", api_key=API_KEY, max_retries=0, timeout=60) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(model="fake/hang", input="anyone there?")
    assert info.value.status_code == 504
    error = info.value.response.json()["error"]
    assert error["type"] == "timeout_error" and error["code"] == "upstream_timeout"
    assert error["message"] == "the upstream sent nothing within 1 s (first-byte timeout)"


@pytest.mark.parametrize("stream", [False, True])
def test_a_hung_model_falls_back_to_the_next_one(http: httpx.Client, stream: bool) -> None:
    body = {"model": "fake/hang", "models": ["fake/echo"], "input": "fall back"}
    if stream:
        status, events = stream_events(http, body)
        assert status == 200
        final = events[-1]["response"]
        assert events[-1]["type"] == "response.completed"
    else:
        reply = http.post("/v1/responses", json=body)
        assert reply.status_code == 200, reply.text
        final = reply.json()
    assert final["model"] == "fake/echo" and final["output"][0]["content"][0]["text"] == "echo: fall back"


def test_a_stream_that_stalls_mid_way_ends_with_error_then_failed(http: httpx.Client) -> None:
    # Output went out already: no fallback, even with one configured.
    status, events = stream_events(http, {"model": "fake/stall-mid-stream", "models": ["fake/echo"],
                                          "input": "one two three four"})
    assert status == 200
    types = [e["type"] for e in events]
    assert "response.output_text.delta" in types
    assert types[-2:] == ["error", "response.failed"], types
    failed = events[-1]["response"]
    assert failed["model"] == "fake/stall-mid-stream"
    assert failed["error"]["message"] == ("the upstream went silent for 1 s in the middle of its response "
                                          "(idle timeout)")


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_trickles_bytes_hits_the_total_limit(http: httpx.Client, stream: bool) -> None:
    body = {"model": "fake/trickle-200", "input": "slowly"}
    if stream:
        status, events = stream_events(http, body)
        error = events[-1]["error"]
    else:
        reply = http.post("/v1/responses", json=body)
        status, error = reply.status_code, reply.json()["error"]
    assert status == 504
    assert error["type"] == "timeout_error"
    assert error["message"] == "the upstream did not finish within 3 s (total timeout)"


def test_the_callers_deadline_bounds_a_hung_call_with_a_clear_error(hung: Stack) -> None:
    # The provider's first-byte limit is 1 s; the caller's 0.9 s deadline is earlier and wins, and the caller gets
    # the service's error saying so rather than a bare DEADLINE_EXCEEDED.
    request = responses_service_pb2.CreateResponseRequest(model="fake/hang",
                                                          input=responses_service_pb2.Input(text="x"))
    with grpc.insecure_channel(hung.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateResponse(request, metadata=[("authorization", f"Bearer {API_KEY}")], timeout=0.9)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert caught.value.details() == "the request's deadline passed while waiting for the upstream"  # type: ignore[attr-defined]
    info, _ = details(caught.value)
    assert info is not None and info.reason == "upstream_timeout"
