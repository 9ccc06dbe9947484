"""The `routing` section of the config: which provider endpoints serve a model, at what price and policy.

Shape (YAML)::

    routing:
      cooldown_seconds: 30      # an endpoint that just failed is tried last for this long
      max_retries: 2            # extra rounds over the plan, with backoff, before the first byte
      retry_backoff: 0.2        # first backoff in seconds; doubles each round, with jitter
      models:
        - name: llama-3-8b      # what clients send as `model`; may contain '/'
          endpoints:
            - provider: a                 # a name from `providers`
              model: meta/llama-3-8b      # the upstream model id
              price: {prompt: 0.1, completion: 0.2, request: 0}   # USD per million tokens / per request
              context_length: 8192
              quantization: fp8
              data_collection: deny       # 'allow' (default): the provider may keep data; 'deny': it does not
              zdr: true                   # zero data retention
              tier: default               # service_tier reported when this endpoint serves
              supported_parameters: [temperature, tools]   # omitted = supports every parameter
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.schema import (
    EndpointFile,
    EndpointPriceFile,
    RoutedModelFile,
    RoutingFile,
    validate_section,
)


@dataclass(frozen=True)
class Endpoint:
    provider: str
    # The upstream model id, as the provider knows it.
    model: str
    # USD per million input / output tokens, and per request.
    price_prompt: float = 0.0
    price_completion: float = 0.0
    price_request: float = 0.0
    context_length: int | None = None
    quantization: str | None = None
    # "allow": the provider may store or train on the data; "deny": it does not.
    data_collection: Literal["allow", "deny"] = "allow"
    zdr: bool = False
    tier: str = "default"
    # None: every request parameter is supported.
    supported_parameters: frozenset[str] | None = None

    @property
    def slug(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def price(self) -> float:
        """What `sort: price` compares: prompt plus completion price per million tokens."""
        return self.price_prompt + self.price_completion


@dataclass(frozen=True)
class RoutedModel:
    name: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class RoutingConfig:
    models: tuple[RoutedModel, ...] = ()
    cooldown_seconds: float = 30.0
    max_retries: int = 2
    retry_backoff: float = 0.2

    def model(self, name: str) -> RoutedModel | None:
        return next((m for m in self.models if m.name == name), None)


def _endpoint(raw: EndpointFile, where: str, provider_names: set[str]) -> Endpoint:
    if raw.provider not in provider_names:
        known = ", ".join(sorted(provider_names)) or "none"
        raise ConfigError(f"{where}.provider: no provider named {raw.provider!r} (configured: {known})")
    price = raw.price or EndpointPriceFile()
    return Endpoint(
        provider=raw.provider,
        model=raw.model,
        price_prompt=price.prompt,
        price_completion=price.completion,
        price_request=price.request,
        context_length=raw.context_length,
        # Quantizations compare case-insensitively, as OpenRouter's enum values are lower case.
        quantization=None if raw.quantization is None else raw.quantization.lower(),
        data_collection=raw.data_collection,
        zdr=raw.zdr,
        tier=raw.tier,
        supported_parameters=None if raw.supported_parameters is None else frozenset(raw.supported_parameters),
    )


def _model(raw: RoutedModelFile, where: str, provider_names: set[str]) -> RoutedModel:
    parsed = tuple(_endpoint(e, f"{where}.endpoints[{i}]", provider_names) for i, e in enumerate(raw.endpoints))
    slugs = [e.slug for e in parsed]
    if len(set(slugs)) != len(slugs):
        # Stats and cooldowns are kept per provider/model; two identical endpoints would share them silently.
        raise ConfigError(f"{where}.endpoints: each provider/model pair may appear once for model {raw.name!r}")
    return RoutedModel(name=raw.name, endpoints=parsed)


def parse_routing(raw: Any, provider_names: set[str]) -> RoutingConfig:
    """The `routing` section (None or missing: no routed models, defaults for the rest)."""
    if raw is None:
        return RoutingConfig()
    section = validate_section(RoutingFile, raw, "routing")
    models = tuple(_model(m, f"routing.models[{i}]", provider_names) for i, m in enumerate(section.models or ()))
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"routing.models: names must be unique, repeated: {duplicates}")
    return RoutingConfig(
        models=models,
        cooldown_seconds=section.cooldown_seconds,
        max_retries=section.max_retries,
        retry_backoff=section.retry_backoff,
    )
