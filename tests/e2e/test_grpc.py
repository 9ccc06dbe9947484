"""End to end over gRPC: unary and streaming, health, reflection, auth and error details."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchboard.edge import codec
from switchboard.responses.v1 import response_pb2, responses_service_pb2, responses_service_pb2_grpc
from tests.e2e.stack import API_KEY, Stack
from tests.streams import check_stream

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.grpc) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> responses_service_pb2_grpc.ResponsesStub:
    return responses_service_pb2_grpc.ResponsesStub(channel)


def request(model: str = "fake/echo", text: str = "hello grpc", **fields: Any) -> Any:
    return responses_service_pb2.CreateResponseRequest(model=model, input=responses_service_pb2.Input(text=text),
                                                       **fields)


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    info = bad = None
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
    return info, bad


def test_unary(stub: responses_service_pb2_grpc.ResponsesStub) -> None:
    response = stub.CreateResponse(request(instructions="sys"), metadata=AUTH, timeout=30)
    assert response.status == response_pb2.RESPONSE_STATUS_COMPLETED
    assert response.output_text == "echo: hello grpc"
    assert response.output[0].message.content.parts.parts[0].output_text.text == "echo: hello grpc"
    assert response.instructions == "sys"


def test_streaming(stub: responses_service_pb2_grpc.ResponsesStub) -> None:
    events = list(stub.StreamResponse(request(text="stream over grpc"), metadata=AUTH, timeout=30))
    final = check_stream([codec.encode(e) for e in events])
    assert final["output_text"] == "echo: stream over grpc"
    assert events[-1].WhichOneof("event") == "response_completed"


def test_streaming_through_envoy_internal_listener(stack: Stack) -> None:
    config = stack.config_path.read_text()
    address = next(line.split(": ")[1].strip() for line in config.splitlines() if "envoy_grpc" in line)
    with grpc.insecure_channel(address) as channel:
        stub = responses_service_pb2_grpc.ResponsesStub(channel)
        events = list(stub.StreamResponse(request(text="via envoy"), metadata=AUTH, timeout=30))
        assert check_stream([codec.encode(e) for e in events])["output_text"] == "echo: via envoy"
        assert stub.CreateResponse(request(text="unary via envoy"), metadata=AUTH, timeout=30).output_text == (
            "echo: unary via envoy")


def test_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "switchboard.responses.v1.Responses"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "switchboard.responses.v1.Responses" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer nope"),)])
def test_unauthenticated(stub: responses_service_pb2_grpc.ResponsesStub, metadata: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateResponse(request(), metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    info, _ = details(caught.value)
    assert info is not None and info.reason in ("missing_api_key", "invalid_api_key")
    with pytest.raises(grpc.RpcError) as streamed:
        list(stub.StreamResponse(request(), metadata=metadata, timeout=10))
    assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_errors_carry_error_info_and_bad_request(stub: responses_service_pb2_grpc.ResponsesStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateResponse(request(model="nowhere/x"), metadata=AUTH, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    info, bad = details(caught.value)
    assert info is not None and info.reason == "model_not_found" and info.metadata["type"] == "not_found_error"
    assert bad is not None and bad.field_violations[0].field == "model"


def test_upstream_failure_is_unavailable(stub: responses_service_pb2_grpc.ResponsesStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamResponse(request(model="fake/fail-500"), metadata=AUTH, timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    info, _ = details(caught.value)
    assert info is not None and info.reason == "upstream_error"


def test_deadline_bounds_the_upstream_call(stub: responses_service_pb2_grpc.ResponsesStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateResponse(request(model="fake/slow-3000"), metadata=AUTH, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
