"""/v1/models and gRPC `Models` end to end: the openai SDK, OpenRouter's SDK (strict models), raw HTTP and gRPC."""

from __future__ import annotations

from decimal import Decimal

import grpc
import httpx
import openai
import pytest
from openrouter import OpenRouter

from switchboard.responses.v1 import models_service_pb2, models_service_pb2_grpc
from tests.e2e.stack import API_KEY, Stack

AUTH = (("authorization", f"Bearer {API_KEY}"),)


def test_openai_sdk_lists_every_configured_model(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    # The routed model, the default and priced model, and the embedded model, each once.
    assert {"tiny-context", "fake/echo", "local/gemma-3-270m"} <= set(models)
    assert models["fake/echo"].owned_by == "fake"
    assert models["tiny-context"].owned_by == "switchboard"
    assert all(m.object == "model" and m.created > 1_600_000_000 for m in models.values())
    one = client.models.retrieve("fake/echo")
    assert one.id == "fake/echo" and one.owned_by == "fake"


def test_openrouter_sdk_parses_the_list_with_extras(base_url: str) -> None:
    with OpenRouter(api_key=API_KEY, server_url=f"{base_url}/v1") as router:
        page = router.models.list()
        assert page is not None
        listing = page.result
    by_id = {m.id: m for m in listing.data}
    assert listing.total_count == len(listing.data)
    echo = by_id["fake/echo"]
    # pricing: {prompt: 1.0, completion: 2.0} USD per million tokens in the config -> per token strings.
    assert Decimal(echo.pricing.prompt) == Decimal("0.000001")
    assert Decimal(echo.pricing.completion) == Decimal("0.000002")
    assert "tools" in echo.supported_parameters
    assert echo.architecture.input_modalities == ["text", "image", "file"]
    tiny = by_id["tiny-context"]
    assert tiny.context_length == 300
    assert tiny.top_provider.context_length == 300
    local = by_id["local/gemma-3-270m"]
    assert local.architecture.input_modalities == ["text"]
    assert "tools" not in local.supported_parameters


def test_routed_model_shows_its_endpoints(http: httpx.Client) -> None:
    body = http.get("/v1/models/tiny-context").json()
    assert body["object"] == "model"
    assert [(e["provider_name"], e["model"], e["context_length"]) for e in body["endpoints"]] == [
        ("fake", "echo", 300)]
    assert body["links"]["details"] == "/v1/models/tiny-context"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/fake/echo"])
def test_models_need_the_api_key(base_url: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        reply = httpx.get(f"{base_url}{path}", headers=headers, timeout=30)
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["type"] == "authentication_error"


def test_unknown_model_is_a_404_with_an_error_body(http: httpx.Client) -> None:
    reply = http.get("/v1/models/nope/nothing")
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "nope/nothing" in error["message"]


def test_grpc_models_service(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc) as channel:
        stub = models_service_pb2_grpc.ModelsStub(channel)
        listing = stub.ListModels(models_service_pb2.ListModelsRequest(), metadata=AUTH, timeout=30)
        assert listing.object == "list" and "fake/echo" in {m.id for m in listing.data}
        model = stub.GetModel(models_service_pb2.GetModelRequest(model="tiny-context"), metadata=AUTH, timeout=30)
        assert model.endpoints[0].provider_name == "fake"
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetModel(models_service_pb2.GetModelRequest(model="nope"), metadata=AUTH, timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as denied:
            stub.ListModels(models_service_pb2.ListModelsRequest(), timeout=30)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
