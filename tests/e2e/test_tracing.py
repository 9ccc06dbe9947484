"""One trace from the client through Envoy, the edge, the service and the upstream HTTP call."""

from __future__ import annotations

import secrets

import httpx

from tests.e2e.stack import API_KEY, Stack
from tests.fakes.otlp import Collector, Span

SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3


def _has_all(spans: list[Span]) -> bool:
    services = {s.service for s in spans}
    upstream = [s for s in spans if s.service == "switchboard-service" and s.kind == SPAN_KIND_CLIENT]
    return {"switchboard-edge", "switchboard-service"} <= services and len(upstream) >= 2


def test_traceparent_flows_through_every_hop(stack: Stack, collector: Collector) -> None:
    trace_id = secrets.token_hex(16)
    parent = secrets.token_hex(8)
    reply = httpx.post(
        f"{stack.envoy}/v1/responses",
        headers={"authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-{parent}-01",
                 "x-session-id": "header-session"},
        json={"input": "trace me", "session_id": "body-session", "user": "user-1",
              "trace": {"trace_name": "checkout", "generation_name": "gen-1", "team": "payments"}},
        timeout=30,
    )
    assert reply.status_code == 200
    spans = collector.wait_for(trace_id, _has_all)
    assert _has_all(spans), [(s.service, s.name, s.kind) for s in spans]
    by_id = {s.span_id: s for s in spans}

    edge = [s for s in spans if s.service == "switchboard-edge" and s.kind == SPAN_KIND_SERVER]
    assert edge, "the edge has a server span"
    if edge[0].parent_span_id != parent:
        # Envoy traces too: client -> Envoy's span -> edge.
        envoy = collector.wait_for(trace_id, lambda found: any(s.span_id == edge[0].parent_span_id for s in found))
        hop = next(s for s in envoy if s.span_id == edge[0].parent_span_id)
        assert hop.parent_span_id == parent, "Envoy's span continues the client's trace"
    service = [s for s in spans if s.service == "switchboard-service" and s.kind == SPAN_KIND_SERVER]
    assert service, "the service has a server span"
    assert by_id[service[0].parent_span_id].service == "switchboard-edge", "edge -> service via gRPC metadata"
    attempt = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert attempt and attempt[0].parent_span_id == service[0].span_id, "the upstream attempt is in the service span"
    assert attempt[0].name == "gen-1", "generation_name names the upstream call's span"
    upstream = [s for s in spans if s.service == "switchboard-service" and s.kind == SPAN_KIND_CLIENT
                and s.span_id != attempt[0].span_id]
    assert upstream and upstream[0].parent_span_id == attempt[0].span_id, "the upstream HTTP call is in the attempt"
    assert upstream[0].attributes.get("http.request.method", upstream[0].attributes.get("http.method")) == "POST"

    attributes = service[0].attributes
    assert attributes["session.id"] == "body-session", "the body's session_id wins over x-session-id"
    assert attributes["user.id"] == "user-1"
    assert attributes["switchboard.trace.trace_name"] == "checkout"
    assert attributes["switchboard.trace.generation_name"] == "gen-1"
    assert attributes["switchboard.trace.team"] == "payments"
    assert edge[0].attributes["session.id"] == "body-session"


def test_header_session_is_used_without_a_body_session(stack: Stack, collector: Collector) -> None:
    trace_id = secrets.token_hex(16)
    httpx.post(f"{stack.http}/v1/responses", json={"input": "x"}, timeout=30, headers={
        "authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
        "x-session-id": "header-session"})
    spans = collector.wait_for(trace_id, _has_all)
    service = [s for s in spans if s.service == "switchboard-service" and s.kind == SPAN_KIND_SERVER]
    assert service and service[0].attributes["session.id"] == "header-session"


def test_generation_name_and_an_external_trace_shape_the_upstream_span(stack: Stack, collector: Collector) -> None:
    trace_id, theirs, their_parent = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(8)
    httpx.post(f"{stack.http}/v1/responses", timeout=30, headers={
        "authorization": f"Bearer {API_KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={"input": "x", "trace": {"generation_name": "summarise-ticket", "trace_id": theirs,
                                      "parent_span_id": their_parent}})
    spans = collector.wait_for(trace_id, lambda found: any(s.name == "summarise-ticket" for s in found))
    [generation] = [s for s in spans if s.name == "summarise-ticket"]
    assert generation.kind == SPAN_KIND_CLIENT and generation.attributes["gen_ai.operation.name"] == "chat"
    assert generation.links == ((theirs, their_parent),)
