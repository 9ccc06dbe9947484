"""`models` fallbacks: tried in order after `model` when a call fails before any output."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from tests.e2e.stack import API_KEY, Stack
from tests.e2e.test_tracing import SPAN_KIND_CLIENT
from tests.fakes.otlp import Collector


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_order_and_answering_model(http: httpx.Client, stream: bool) -> None:
    request = {"model": "fake/fail-500", "models": ["fake/fail-429", "fake/echo"], "input": "fall back",
               "stream": stream}
    if stream:
        with http.stream("POST", "/v1/responses", json=request) as reply:
            lines = [line for line in reply.iter_lines() if line.startswith("data: {")]
        final = json.loads(lines[-1][6:])["response"]
    else:
        final = http.post("/v1/responses", json=request).json()
    assert final["model"] == "fake/echo"
    assert final["output_text"] == "echo: fall back"


def test_no_fallback_on_a_client_error(http: httpx.Client) -> None:
    reply = http.post("/v1/responses", json={"model": "fake/fail-400", "models": ["fake/echo"], "input": "x"})
    assert reply.status_code == 400


def test_all_fail_reports_the_last_error(http: httpx.Client) -> None:
    reply = http.post("/v1/responses", json={"model": "fake/fail-500", "models": ["fake/fail-429"], "input": "x"})
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["error"]["type"] == "rate_limit_error"


def test_each_attempt_is_a_span(stack: Stack, collector: Collector) -> None:
    trace_id = secrets.token_hex(16)
    httpx.post(f"{stack.http}/v1/responses", timeout=30, json={
        "model": "fake/fail-500", "models": ["fake/echo"], "input": "spans"},
        headers={"authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})

    def attempts(spans: list) -> list:  # type: ignore[type-arg]
        return [s for s in spans if s.name.startswith("chat ")]

    spans = collector.wait_for(trace_id, lambda found: len(attempts(found)) >= 2)
    chat = sorted(attempts(spans), key=lambda s: s.attributes["gen_ai.request.model"])
    assert [s.attributes["gen_ai.request.model"] for s in chat] == ["echo", "fail-500"]
    assert all(s.kind == SPAN_KIND_CLIENT and s.attributes["gen_ai.operation.name"] == "chat" for s in chat)
    assert chat[1].attributes["error.type"] == "upstream_error"
    assert chat[0].attributes["gen_ai.usage.output_tokens"] > 0
    assert chat[0].attributes["gen_ai.response.finish_reasons"] == ("stop",)
