from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.stack import API_KEY, Process, Stack, start_stack, start_upstream
from tests.fakes.otlp import Collector
from tests.wire import RECORDER, Recorder


@pytest.fixture(scope="session", autouse=True)
def wire_recorder() -> Iterator[Recorder]:
    """Checks every JSON body, SSE event and WebSocket frame a gateway answers in these tests (tests/wire.py)."""
    RECORDER.install()
    yield RECORDER
    RECORDER.uninstall()


@pytest.fixture(autouse=True)
def wire_conformance(wire_recorder: Recorder) -> Iterator[None]:
    """Fails the test when anything the gateway answered during it is not what strict clients parse."""
    wire_recorder.take()
    yield
    violations = wire_recorder.take()
    assert not violations, "the gateway emitted non-conforming JSON:\n" + "\n".join(violations)


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    collector = Collector().start()
    yield collector
    collector.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    process, url = start_upstream()
    yield url
    process.stop()


@pytest.fixture(scope="session")
def native_upstreams() -> Iterator[dict[str, str]]:
    """Fake Anthropic Messages and native Responses upstreams."""
    started = {kind: start_upstream(kind) for kind in ("anthropic", "openai_responses")}
    yield {kind: url for kind, (_, url) in started.items()}
    for process, _ in started.values():
        process.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: str, collector: Collector,
          native_upstreams: dict[str, str]) -> Iterator[Stack]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    stack = start_stack(Path(tmp_path_factory.mktemp("stack")), upstream, env=env, more_upstreams=native_upstreams)
    yield stack
    stack.stop()


@pytest.fixture(params=["envoy", "edge"])
def base_url(request: pytest.FixtureRequest, stack: Stack) -> str:
    """The public URL through Envoy, and the edge directly: both must behave the same."""
    url = stack.envoy if request.param == "envoy" else stack.http
    assert url is not None
    return url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as sdk:
        yield sdk


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as session:
        yield session


__all__ = ["Process"]
