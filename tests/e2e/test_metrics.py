"""Metrics on the Prometheus endpoint after real traffic, and the GenAI semantic conventions on the attempt spans."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import API_KEY, Stack, free_port, start_stack
from tests.fakes.otlp import Collector, Span

LIMITED_KEY = "sk-limited-0123456789"  # one request per minute
SPAN_KIND_CLIENT = 3
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class TelemetryStack:
    stack: Stack
    metrics_url: str


@pytest.fixture(scope="module")
def telemetry_stack(tmp_path_factory: pytest.TempPathFactory, upstream: str,
                    collector: Collector) -> Iterator[TelemetryStack]:
    """A stack with the Prometheus endpoint, content recording on, and a tiny rate limit for one key."""
    metrics_address = f"127.0.0.1:{free_port()}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRICS_EXPORTER": "none"}
    stack = start_stack(
        Path(tmp_path_factory.mktemp("metrics")), upstream, env=env, local_model=False,
        server={"metrics": metrics_address},
        extra={"auth": {"api_keys": [API_KEY, LIMITED_KEY]}, "record_content": True,
               "rate_limits": {"per_key": {LIMITED_KEY: {"requests_per_minute": 1}}}},
    )
    yield TelemetryStack(stack, f"http://{metrics_address}/metrics")
    stack.stop()


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return {(sample.name, frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope_"))):
            sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def post(base_url: str, body: dict[str, Any], key: str = API_KEY, **headers: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/responses", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}", **headers})


def test_metrics_count_the_traffic(telemetry_stack: TelemetryStack) -> None:
    base = telemetry_stack.stack.envoy
    assert base is not None
    before = scrape(telemetry_stack.metrics_url)
    echo = {"model": "fake/echo", "provider": "fake"}

    for _ in range(3):  # 2 input words and 3 output words ("echo: hello there") each
        assert post(base, {"model": "fake/echo", "input": "hello there"}).status_code == 200
    failed = post(base, {"model": "fake/fail-500", "input": "x"})
    assert failed.status_code == 502, failed.text

    # A stream: active while it runs, back to 0 when it ends.
    body = {"model": "fake/slow-300", "input": "one two three", "stream": True}
    during: float | None = None
    with httpx.stream("POST", f"{base}/v1/responses", json=body, timeout=30,
                      headers={"authorization": f"Bearer {API_KEY}"}) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if during is None and line == "event: response.output_text.delta":
                during = value(scrape(telemetry_stack.metrics_url), "switchboard_active_streams")
    assert during == value(before, "switchboard_active_streams") + 1

    assert post(base, {"input": "x"}, key=LIMITED_KEY).status_code == 200
    limited = post(base, {"input": "x"}, key=LIMITED_KEY)
    assert limited.status_code == 429, limited.text
    after = scrape(telemetry_stack.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "responses", "status": "OK"}
    assert delta("switchboard_requests_total", **ok, **echo) == 4  # 3 unary + the limited key's admitted one
    assert delta("switchboard_requests_total", **ok, model="fake/slow-300", provider="fake") == 1
    assert delta("switchboard_requests_total", route="responses", status="UNAVAILABLE", model="fake/fail-500") == 1
    assert delta("switchboard_request_duration_seconds_count", **echo) == 4
    assert delta("switchboard_request_duration_seconds_bucket", le="+Inf", **echo) == 4
    assert 0 < delta("switchboard_request_duration_seconds_sum", **echo) < 10
    slow = {"model": "fake/slow-300", "provider": "fake"}
    assert delta("gen_ai_server_time_to_first_token_seconds_count", **slow) == 1
    assert delta("gen_ai_server_time_to_first_token_seconds_sum", **slow) >= 0.3  # the fake waits 300 ms
    assert delta("gen_ai_server_time_to_first_token_seconds_bucket", le="0.25", **slow) == 0
    assert delta("gen_ai_server_time_to_first_token_seconds_count", **echo) == 4
    assert delta("switchboard_upstream_duration_seconds_count", **echo) == 4

    # Tokens as the fake upstream counts them (words): 3 x 2 + 1 input, 3 x 3 + 2 output ("echo: x").
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **echo) == 7
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output", **echo) == 11
    assert delta("gen_ai_client_token_usage_count", gen_ai_token_type="input", **echo) == 4
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **slow) == 3
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output", **slow) == 4
    # pricing: fake/echo costs 1 USD per million prompt tokens and 2 per million completion tokens.
    assert delta("switchboard_cost_USD_total", **echo) == pytest.approx((7 * 1 + 11 * 2) / 1e6)
    assert delta("switchboard_cost_USD_total", **slow) == 0  # no price configured

    # fail-500 is retryable: every failed attempt counts.
    assert delta("switchboard_upstream_errors_total", provider="fake", code="upstream_error") >= 1
    assert value(after, "switchboard_active_streams") == 0
    assert delta("switchboard_rate_limit_rejections_total") == 1


# --- GenAI semantic conventions -------------------------------------------------------------------------------


def attempt_span(collector: Collector, trace_id: str) -> Span:
    def found(spans: list[Span]) -> bool:
        return any(s.name.startswith("chat ") and "gen_ai.response.id" in s.attributes for s in spans)

    spans = collector.wait_for(trace_id, found)
    chats = [s for s in spans if s.name.startswith("chat ") and "gen_ai.response.id" in s.attributes]
    assert chats, [(s.service, s.name) for s in spans]
    return chats[0]


def traced(base_url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    trace_id = secrets.token_hex(16)
    reply = post(base_url, body, traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-01")
    assert reply.status_code == 200, reply.text
    return trace_id, reply.json()


def test_attempt_spans_follow_the_genai_conventions_without_content_by_default(
        stack: Stack, collector: Collector) -> None:
    trace_id, response = traced(stack.http, {"model": "fake/echo", "input": "secret prompt", "max_output_tokens": 50,
                                             "temperature": 0.5})
    span = attempt_span(collector, trace_id)
    assert span.service == "switchboard-service" and span.kind == SPAN_KIND_CLIENT
    assert span.name == "chat echo"
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "fake"
    assert attributes["gen_ai.request.model"] == "echo"
    assert attributes["gen_ai.response.model"] == "echo"
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.input_tokens"] == response["usage"]["input_tokens"] == 2
    assert attributes["gen_ai.usage.output_tokens"] == response["usage"]["output_tokens"] == 3
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.id"] == response["id"]
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes
    assert not [s for s in collector.spans(trace_id) if "secret prompt" in repr(s.attributes)], "no content anywhere"


def test_content_is_recorded_when_the_config_allows(telemetry_stack: TelemetryStack, collector: Collector) -> None:
    base = telemetry_stack.stack.http
    trace_id, response = traced(base, {"model": "fake/echo", "input": "hello content", "instructions": "be brief"})
    attributes = attempt_span(collector, trace_id).attributes
    inputs = orjson.loads(attributes["gen_ai.input.messages"])
    outputs = orjson.loads(attributes["gen_ai.output.messages"])
    assert {"role": "user", "content": "hello content"} in inputs
    assert outputs == [{"role": "assistant", "content": "echo: hello content"}]
    assert attributes["gen_ai.response.id"] == response["id"]
    # A stream records the same attributes once it has ended.
    trace_id = secrets.token_hex(16)
    with httpx.stream("POST", f"{base}/v1/responses", timeout=30, json={"input": "streamed", "stream": True},
                      headers={"authorization": f"Bearer {API_KEY}",
                               "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}) as stream:
        assert stream.status_code == 200
        lines = list(stream.iter_lines())
    assert "data: [DONE]" in lines
    attributes = attempt_span(collector, trace_id).attributes
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert orjson.loads(attributes["gen_ai.output.messages"]) == [{"role": "assistant", "content": "echo: streamed"}]
    assert attributes["gen_ai.usage.output_tokens"] == 2
