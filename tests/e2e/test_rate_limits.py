"""Rate limits end to end: 429 with Retry-After and X-RateLimit-* over HTTP, RESOURCE_EXHAUSTED over gRPC.

Two `switchboard serve` processes (each its own service and edge, no Envoy) share their limits through Redis: the one
at 127.0.0.1:6379, or a `redis-server` started on a free port when none answers. Every test uses API keys made up for
this run, so reruns (and other users of a shared Redis) never see each other's counters (which expire by themselves
within a minute). A third process limits in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc
from tests import redis_server
from tests.e2e.stack import Stack, start_stack, start_upstream, upstream_requests
from tests.e2e.test_grpc import details

RPM = 5
TPM = 100
RUN = secrets.token_hex(6)
# One API key per scenario, unique to this run.
SCENARIOS = ("shared", "tokens", "grpc", "stream", "vip", "memory", "mtokens", "background", "session",
             "refused", "other")
KEYS = {name: f"sk-rl-{name}-{RUN}" for name in SCENARIOS}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    yield from redis_server.redis_url()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    process, url = start_upstream()
    yield url
    process.stop()


def _limits(redis_url: str | None) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "requests_per_minute": RPM,
        "per_key": {
            KEYS["tokens"]: {"requests_per_minute": None, "tokens_per_minute": TPM},
            KEYS["mtokens"]: {"requests_per_minute": None, "tokens_per_minute": TPM},
            KEYS["vip"]: {"requests_per_minute": RPM + 3},
        },
    }
    if redis_url is not None:
        limits["redis_url"] = redis_url
    return limits


def _start(tmp: Path, upstream: str, limits: dict[str, Any]) -> Stack:
    extra = {"auth": {"api_keys": list(KEYS.values())}, "rate_limits": limits}
    return start_stack(tmp, upstream, envoy=False, local_model=False, extra=extra)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory, upstream: str, redis_url: str) -> Iterator[list[Stack]]:
    started: list[Stack] = []
    try:
        for index in range(2):
            started.append(_start(Path(tmp_path_factory.mktemp(f"replica{index}")), upstream, _limits(redis_url)))
        yield started
    finally:
        for stack in started:
            stack.stop()


@pytest.fixture(scope="module")
def memory_stack(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Stack]:
    stack = _start(Path(tmp_path_factory.mktemp("memory")), upstream, _limits(None))
    yield stack
    stack.stop()


def post(base: str, key: str, text: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{base}/v1/responses", json={"model": "fake/echo", "input": text, **fields},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def assert_rate_limited(reply: httpx.Response, what: str) -> None:
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limit_exceeded"
    assert what in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    retry_after = int(reply.headers["retry-after"])
    assert 1 <= retry_after <= 60


def test_redis_limit_is_shared_by_two_processes(stacks: list[Stack], upstream: str) -> None:
    key, marker = KEYS["shared"], "m" + secrets.token_hex(6)
    remaining = []
    for index in range(RPM):
        reply = post(stacks[index % 2].http, key, f"{marker} {index}")
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-ratelimit-limit-requests"] == str(RPM)
        remaining.append(int(reply.headers["x-ratelimit-remaining-requests"]))
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
    # One budget across both processes: each admitted request, wherever it went, spent from it.
    assert remaining == list(range(RPM - 1, -1, -1))
    for stack in stacks:  # the 6th request, on either process
        reply = post(stack.http, key, f"{marker} over")
        assert_rate_limited(reply, f"requests per minute (limit: {RPM})")
        assert reply.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        # GCRA: one request's worth (60 s / 5) refills first.
        assert 1 <= int(reply.headers["retry-after"]) <= 60 // RPM
    # Other API keys keep their own budget.
    assert post(stacks[0].http, KEYS["other"], f"{marker} other").status_code == 200


def test_refused_requests_never_reach_the_upstream(stacks: list[Stack], upstream: str) -> None:
    key, marker = KEYS["refused"], "m" + secrets.token_hex(6)
    statuses = [post(stacks[index % 2].http, key, f"{marker} {index}").status_code for index in range(RPM + 2)]
    assert statuses == [200] * RPM + [429] * 2
    sent = [r for r in upstream_requests(upstream) if marker in str(r["body"])]
    assert len(sent) == RPM


def test_per_key_override(stacks: list[Stack]) -> None:
    key = KEYS["vip"]
    statuses = [post(stacks[index % 2].http, key, "vip").status_code for index in range(RPM + 4)]
    assert statuses == [200] * (RPM + 3) + [429]


def test_tokens_per_minute_shared(stacks: list[Stack]) -> None:
    key = KEYS["tokens"]
    words = " ".join(f"w{index}" for index in range(40))
    first = post(stacks[0].http, key, words)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert "x-ratelimit-limit-requests" not in first.headers  # this key has no request limit
    used = first.json()["usage"]["total_tokens"]
    assert used > TPM // 2
    # The tokens the first call used are spent in Redis: the other process sees a budget too small for the next.
    second = post(stacks[1].http, key, words)
    assert_rate_limited(second, f"tokens per minute (limit: {TPM})")
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= TPM - used


def test_streaming_request_is_refused_before_the_stream(stacks: list[Stack]) -> None:
    key = KEYS["stream"]
    for index in range(RPM + 1):
        with httpx.stream("POST", f"{stacks[index % 2].http}/v1/responses", timeout=30,
                          json={"model": "fake/echo", "input": "s", "stream": True},
                          headers={"authorization": f"Bearer {key}"}) as reply:
            reply.read()
            if reply.status_code != 200:
                break
    assert_rate_limited(reply, "requests per minute")
    assert reply.headers["content-type"].startswith("application/json")
    for name in RATE_HEADERS:
        assert name in reply.headers


def test_grpc_resource_exhausted(stacks: list[Stack]) -> None:
    auth = (("authorization", f"Bearer {KEYS['grpc']}"),)
    request = responses_service_pb2.CreateResponseRequest(model="fake/echo",
                                                          input=responses_service_pb2.Input(text="grpc"))
    errors: list[grpc.RpcError] = []
    for stack in stacks:
        with grpc.insecure_channel(stack.grpc) as channel:
            stub = responses_service_pb2_grpc.ResponsesStub(channel)
            for _ in range(RPM):
                try:
                    _, call = stub.CreateResponse.with_call(request, metadata=auth, timeout=30)
                except grpc.RpcError as error:
                    errors.append(error)
                else:
                    initial = dict(call.initial_metadata())
                    assert initial["x-ratelimit-limit-requests"] == str(RPM)
    # 2 x 5 calls across the two processes: 5 admitted, 5 refused.
    assert len(errors) == RPM
    for error in errors:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        info, _ = details(error)
        assert info is not None and info.reason == "rate_limit_exceeded"
        assert 1 <= int(info.metadata["retry_after"]) <= 60 // RPM
        initial = dict(error.initial_metadata())  # type: ignore[attr-defined]
        assert initial["x-ratelimit-remaining-requests"] == "0"
        assert "retry-after" in initial


def test_in_memory_limit(memory_stack: Stack) -> None:
    key = KEYS["memory"]
    statuses = []
    for index in range(RPM + 1):
        reply = post(memory_stack.http, key, f"memory {index}")
        statuses.append(reply.status_code)
    assert statuses == [200] * RPM + [429]
    assert_rate_limited(reply, f"requests per minute (limit: {RPM})")
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"


def test_in_memory_tokens_per_minute(memory_stack: Stack) -> None:
    key = KEYS["mtokens"]
    words = " ".join(f"w{index}" for index in range(40))
    assert post(memory_stack.http, key, words).status_code == 200
    reply = post(memory_stack.http, key, words)
    assert_rate_limited(reply, f"tokens per minute (limit: {TPM})")
    assert reply.headers["x-ratelimit-limit-tokens"] == str(TPM)


# ---------------------------------------------------------------- paths that skip the limiter


def test_background_requests_count_too(memory_stack: Stack) -> None:
    key = KEYS["background"]
    statuses = [post(memory_stack.http, key, f"bg {index}", background=True).status_code for index in range(RPM + 1)]
    assert statuses == [200] * RPM + [429]


def test_session_turns_count_too(memory_stack: Stack) -> None:
    auth = (("authorization", f"Bearer {KEYS['session']}"),)
    frames = [responses_service_pb2.SessionRequest(create=responses_service_pb2.CreateResponseRequest(
        model="fake/echo", input=responses_service_pb2.Input(text=f"session {index}"))) for index in range(RPM + 1)]
    with grpc.insecure_channel(memory_stack.grpc) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        events = list(stub.Session(iter(frames), metadata=auth, timeout=30))
    errors = [e.error for e in events if e.WhichOneof("frame") == "error"]
    assert [(e.status, e.error.code) for e in errors] == [(429, "rate_limit_exceeded")]
