"""The model catalog (/v1/models, gRPC `Models`): every model a client may send, derived from the configuration.

Routed models (`routing.models`) come first, with their endpoints; then each provider's models as
`<provider>/<model>`: those listed in its `models`, those priced in `pricing`, the default model, and for the
embedded model its one model. Prices are USD per token as decimal strings, as OpenRouter publishes them.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import grpc

from switchboard.responses.v1 import models_service_pb2 as pb
from switchboard.responses.v1 import models_service_pb2_grpc
from switchboard.service.api.auth import abort
from switchboard.shared.config.routing import Endpoint, RoutedModel
from switchboard.shared.config.settings import Config, ProviderConfig
from switchboard.shared.errors import ApiError

OWNER = "switchboard"
# The embedded provider serves one model, whatever id is asked for; this is the id it is listed under.
LOCAL_CONTEXT = 2048

# The request parameters each provider kind honours, in OpenRouter's vocabulary.
_SAMPLING = ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty")
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "llama-cpp": (*_SAMPLING, "top_k"),
    "openai-chat": (*_SAMPLING, "tools", "tool_choice", "parallel_tool_calls", "response_format",
                    "structured_outputs", "reasoning", "include_reasoning", "logprobs", "top_logprobs"),
    "openai-responses": (*_SAMPLING, "tools", "tool_choice", "parallel_tool_calls", "response_format",
                         "structured_outputs", "reasoning", "include_reasoning", "top_logprobs"),
    "anthropic": ("temperature", "top_p", "top_k", "max_tokens", "tools", "tool_choice", "reasoning",
                  "include_reasoning", "stop"),
}
_INPUTS: dict[str, tuple[str, ...]] = {
    "llama-cpp": ("text",),
    "openai-chat": ("text", "image", "file"),
    "openai-responses": ("text", "image", "file"),
    "anthropic": ("text", "image", "file"),
}


def per_token(usd_per_million: float) -> str:
    """USD per million tokens as a per-token decimal string without exponent: 2.5 -> "0.0000025"."""
    value = Decimal(repr(usd_per_million)) / Decimal(1_000_000)
    text = format(value.normalize(), "f")
    return text if value else "0"


def _pricing(prompt: float, completion: float, request: float = 0.0) -> pb.ModelPricing:
    return pb.ModelPricing(prompt=per_token(prompt), completion=per_token(completion), request=per_token(request))


class Catalog:
    """The models of one configuration, built once."""

    def __init__(self, config: Config, created: int | None = None) -> None:
        self._config = config
        self._created = int(time.time()) if created is None else created
        self._kinds = {p.name: p.kind for p in config.providers}
        self.models: dict[str, pb.Model] = {}
        for routed in config.routing.models:
            self._add(self._routed(routed))
        for provider in config.providers:
            for model_id in self._provider_models(provider):
                if model_id not in self.models:
                    self._add(self._direct(provider, model_id))

    def _add(self, model: pb.Model) -> None:
        self.models[model.id] = model

    def _provider_models(self, provider: ProviderConfig) -> list[str]:
        prefix = f"{provider.name}/"
        named = [f"{prefix}{m}" for m in provider.models]
        named += [name for name in self._config.prices if name.startswith(prefix)]
        if self._config.default_model and self._config.default_model.startswith(prefix):
            named.append(self._config.default_model)
        return list(dict.fromkeys(named))

    def _parameters(self, kind: str, declared: frozenset[str] | None) -> list[str]:
        known = _PARAMETERS.get(kind, _SAMPLING)
        return sorted(known if declared is None else declared)

    def _endpoint(self, endpoint: Endpoint) -> pb.ModelEndpoint:
        message = pb.ModelEndpoint(
            provider_name=endpoint.provider, model=endpoint.model,
            pricing=_pricing(endpoint.price_prompt, endpoint.price_completion, endpoint.price_request),
            supported_parameters=self._parameters(self._kinds.get(endpoint.provider, ""),
                                                  endpoint.supported_parameters),
            data_collection=endpoint.data_collection, zdr=endpoint.zdr, tier=endpoint.tier,
        )
        if endpoint.context_length is not None:
            message.context_length = endpoint.context_length
        if endpoint.quantization is not None:
            message.quantization = endpoint.quantization
        return message

    def _model(self, model_id: str, owner: str, description: str, endpoints: list[pb.ModelEndpoint],
               inputs: list[str]) -> pb.Model:
        first = endpoints[0]
        contexts = [e.context_length for e in endpoints if e.HasField("context_length")]
        parameters = sorted({p for e in endpoints for p in e.supported_parameters})
        model = pb.Model(
            id=model_id, object="model", created=self._created, owned_by=owner, name=model_id,
            canonical_slug=model_id, description=description, pricing=first.pricing,
            supported_parameters=parameters,
            architecture=pb.ModelArchitecture(input_modalities=inputs, output_modalities=["text"],
                                              modality=f"{'+'.join(inputs)}->text"),
            top_provider=pb.TopProvider(is_moderated=False), links=pb.ModelLinks(details=f"/v1/models/{model_id}"),
            endpoints=endpoints,
        )
        if contexts:
            model.context_length = max(contexts)
        if first.HasField("context_length"):
            model.top_provider.context_length = first.context_length
        return model

    def _routed(self, routed: RoutedModel) -> pb.Model:
        endpoints = [self._endpoint(e) for e in routed.endpoints]
        inputs = [m for m in ("text", "image", "file")
                  if all(m in _INPUTS.get(self._kinds.get(e.provider, ""), ("text",)) for e in routed.endpoints)]
        slugs = ", ".join(e.slug for e in routed.endpoints)
        return self._model(routed.name, OWNER, f"Routed over {slugs}.", endpoints, inputs)

    def _direct(self, provider: ProviderConfig, model_id: str) -> pb.Model:
        upstream = model_id.split("/", 1)[1]
        prompt, completion = self._config.prices.get(model_id, (0.0, 0.0))
        endpoint = pb.ModelEndpoint(
            provider_name=provider.name, model=upstream, pricing=_pricing(prompt, completion),
            supported_parameters=self._parameters(provider.kind, None), data_collection="allow", tier="default",
        )
        if provider.kind == "llama-cpp":
            endpoint.context_length = int(provider.options.get("n_ctx", LOCAL_CONTEXT))
        description = ("An embedded model, run by llama.cpp in a worker process." if provider.kind == "llama-cpp"
                       else f"{upstream} from provider {provider.name} ({provider.kind}).")
        return self._model(model_id, provider.name, description, [endpoint], list(_INPUTS.get(provider.kind, ())))

    def list(self) -> pb.ListModelsResponse:
        data = list(self.models.values())
        return pb.ListModelsResponse(object="list", data=data, total_count=len(data), links=pb.ModelListLinks())

    def get(self, model_id: str) -> pb.Model:
        model = self.models.get(model_id)
        if model is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, "model_not_found",
                           f"The model {model_id!r} does not exist on this gateway; GET /v1/models lists them.",
                           param="model")
        return model


class ModelsServicer(models_service_pb2_grpc.ModelsServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def ListModels(self, request: pb.ListModelsRequest,  # noqa: N802 (gRPC method name)
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListModelsResponse:
        return self._catalog.list()

    async def GetModel(self, request: pb.GetModelRequest,  # noqa: N802 (gRPC method name)
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.Model:
        try:
            return self._catalog.get(request.model)
        except ApiError as error:
            await abort(context, error)
            raise
