"""An HTTP provider's time limits (connect, first byte, idle, total; per provider and per model) against hung
upstreams (the fake Chat Completions server's `hang`, `stall-mid-stream` and `trickle-<ms>` models), always
bounded by the caller's deadline."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest

from switchboard.service.providers.base import Delta, TextDelta
from switchboard.service.providers.http import Timeouts
from switchboard.service.providers.openai_chat import OpenAIChatProvider
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.errors import UpstreamError
from tests.service.builders import start_fake, user_turn

SHORT = {"connect": 2, "first_byte": 1, "idle": 1, "total": 30}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    yield from start_fake("tests.fakes.openai_chat")


@pytest.fixture
async def make(upstream: str) -> AsyncIterator[Any]:
    made: list[OpenAIChatProvider] = []

    def build(**options: Any) -> OpenAIChatProvider:
        made.append(OpenAIChatProvider("fake", base_url=upstream + "/v1", **options))
        return made[-1]

    yield build
    for provider in made:
        await provider.aclose()


async def run(provider: OpenAIChatProvider, model: str, *, stream: bool,
              timeout: float | None = None) -> tuple[list[Delta], UpstreamError]:
    deltas: list[Delta] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in provider.stream(user_turn(model, "one two three four five six", stream=stream,
                                                     timeout=timeout)):
            deltas.append(delta)
    assert info.value.code == "upstream_timeout" and info.value.status == grpc.StatusCode.DEADLINE_EXCEEDED
    return deltas, info.value


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_that_never_answers_hits_the_first_byte_limit(make: Any, stream: bool) -> None:
    # The caller's deadline (60 s) is later than the provider's first-byte limit: the earlier one wins.
    deltas, error = await run(make(timeouts=SHORT), "hang", stream=stream, timeout=60)
    assert not deltas
    assert error.message == "the upstream sent nothing within 1 s (first-byte timeout)"
    assert error.retryable  # nothing was sent: another attempt may do better


@pytest.mark.parametrize("stream", [True, False])
async def test_the_callers_deadline_wins_when_it_is_earlier(make: Any, stream: bool) -> None:
    deltas, error = await run(make(timeouts={"first_byte": 30}), "hang", stream=stream, timeout=0.5)
    assert not deltas
    assert error.message == "the request's deadline passed while waiting for the upstream"
    assert not error.retryable  # past the caller's deadline nothing can help


async def test_a_stream_that_stalls_mid_way_hits_the_idle_limit(make: Any) -> None:
    deltas, error = await run(make(timeouts=SHORT), "stall-mid-stream", stream=True)
    assert any(isinstance(d, TextDelta) for d in deltas)
    assert error.message == "the upstream went silent for 1 s in the middle of its response (idle timeout)"
    assert not error.retryable  # output went out already


async def test_a_unary_body_that_stalls_mid_way_hits_the_idle_limit(make: Any) -> None:
    deltas, error = await run(make(timeouts=SHORT), "stall-mid-stream", stream=False)
    assert not deltas
    assert "(idle timeout)" in error.message and error.retryable


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_that_trickles_bytes_hits_the_total_limit(make: Any, stream: bool) -> None:
    # A byte every 0.2 s never trips the idle limit (1 s), nor the first-byte one; only the total does.
    deltas, error = await run(make(timeouts={**SHORT, "total": 2}), "trickle-200", stream=stream)
    assert error.message == "the upstream did not finish within 2 s (total timeout)"


async def test_a_model_gets_its_own_limits(make: Any) -> None:
    provider = make(timeouts={"first_byte": 30}, model_timeouts={"hang": {"first_byte": 0.5}})
    _, error = await run(provider, "hang", stream=True)
    assert error.message == "the upstream sent nothing within 0.5 s (first-byte timeout)"
    assert provider.timeouts("hang") == Timeouts(first_byte=0.5)
    assert provider.timeouts("echo") == Timeouts(first_byte=30)


async def test_older_option_names_still_set_connect_and_total(make: Any) -> None:
    provider = make(connect_timeout=3, default_timeout=15)
    assert provider.timeouts("echo") == Timeouts(connect=3, total=15)
    deltas = [d async for d in provider.stream(user_turn("echo", "hi", timeout=10))]
    assert any(isinstance(d, TextDelta) for d in deltas)


async def test_a_server_that_completes_no_handshake_hits_the_connect_limit() -> None:
    # A listening socket whose backlog is full never completes another handshake.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            provider = OpenAIChatProvider("fake", base_url=f"http://127.0.0.1:{port}/v1",
                                          timeouts={"connect": 0.5, "first_byte": 30})
            try:
                with pytest.raises(UpstreamError) as info:
                    async for _ in provider.stream(user_turn("echo", timeout=30)):
                        pass
            finally:
                await provider.aclose()
        finally:
            for filler in fillers:
                filler.close()
    assert info.value.message == "the upstream accepted no connection within 0.5 s (connect timeout)"
    assert info.value.retryable


@pytest.mark.parametrize(("options", "message"), [
    ({"timeouts": {"first_bite": 1}}, "providers.fake.timeouts: unknown keys ['first_bite']"),
    ({"timeouts": {"idle": 0}}, "providers.fake.timeouts.idle: a number of seconds > 0, got 0"),
    ({"timeouts": 5}, "providers.fake.timeouts: expected a mapping"),
    ({"model_timeouts": {"o3": {"total": "long"}}}, "providers.fake.model_timeouts.o3.total: a number of seconds"),
])
def test_bad_limits_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        OpenAIChatProvider("fake", base_url="http://127.0.0.1:9/v1", **options)


def test_the_fake_upstream_lists_its_hung_models(upstream: str) -> None:
    ids = {m["id"] for m in httpx.get(f"{upstream}/v1/models").json()["data"]}
    assert {"hang", "stall-mid-stream", "trickle-500"} <= ids
