"""The validation table of tests/service/test_validation.py, end to end: over HTTP (through Envoy and directly to
the edge) a 400 with the error JSON, and over gRPC INVALID_ARGUMENT with ErrorInfo and BadRequest details."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from switchboard.edge import codec
from switchboard.responses.v1 import responses_service_pb2, responses_service_pb2_grpc
from tests.e2e.stack import Stack
from tests.e2e.test_grpc import AUTH, details
from tests.service.test_validation import BASE, CASES, PROTO_CASES, VALID, Case, Valid, proto_request

Request = responses_service_pb2.CreateResponseRequest


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Iterator[responses_service_pb2_grpc.ResponsesStub]:
    with grpc.insecure_channel(stack.grpc, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        yield responses_service_pb2_grpc.ResponsesStub(channel)


def call(stub: responses_service_pb2_grpc.ResponsesStub, request: Request) -> Any:
    if request.stream:
        return list(stub.StreamResponse(request, metadata=AUTH, timeout=30))
    return stub.CreateResponse(request, metadata=AUTH, timeout=30)


def check_grpc(stub: responses_service_pb2_grpc.ResponsesStub, request: Request, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(stub, request)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    info, bad = details(error)
    assert info is not None and info.reason == case.code
    assert info.metadata["type"] == "invalid_request_error"
    assert bad is not None and bad.field_violations[0].field == case.param
    assert case.message in (error.details() or "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_over_http(http: httpx.Client, base_url: str, stack: Stack, case: Case) -> None:
    if case.big and base_url == stack.envoy:
        pytest.skip("Envoy's 4 MiB body limit answers 413 before the service sees the request")
    reply = http.post("/v1/responses", json={**BASE, **case.body})
    assert reply.status_code == 400, reply.text[:500]
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", case.param, case.code)
    assert case.message in error["message"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_over_grpc(stub: responses_service_pb2_grpc.ResponsesStub, case: Case) -> None:
    check_grpc(stub, case.request(), case)


@pytest.mark.parametrize("case", PROTO_CASES, ids=[c.id for c in PROTO_CASES])
def test_proto_only_rule_over_grpc(stub: responses_service_pb2_grpc.ResponsesStub, case: Case) -> None:
    check_grpc(stub, proto_request(case), case)


SERVED = [v for v in VALID if v.served]


@pytest.mark.parametrize("valid", SERVED, ids=[v.id for v in SERVED])
def test_valid_edge_values_are_served(http: httpx.Client, stub: responses_service_pb2_grpc.ResponsesStub,
                                      valid: Valid) -> None:
    body = {**BASE, **valid.body}
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text[:500]
    if not body.get("stream"):
        assert reply.json()["status"] == "completed"
    call(stub, codec.decode(body, Request))
