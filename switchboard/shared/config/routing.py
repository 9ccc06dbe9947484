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

import math
from dataclasses import dataclass
from typing import Any, Literal

from switchboard.shared.config.errors import ConfigError

SERVICE_TIERS = ("default", "flex", "priority", "scale")
_TOP_KEYS = {"cooldown_seconds", "max_retries", "retry_backoff", "models"}
_MODEL_KEYS = {"name", "endpoints"}
_ENDPOINT_KEYS = {"provider", "model", "price", "context_length", "quantization", "data_collection", "zdr", "tier",
                  "supported_parameters"}
_PRICE_KEYS = {"prompt", "completion", "request"}


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


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _no_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(allowed)}")


def _number(raw: Any, where: str, *, minimum: float = 0.0) -> float:
    # bool is an int in Python; `price: true` is a typo, not a price.
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < minimum:
        raise ConfigError(f"{where}: expected a number >= {minimum:g}, got {raw!r}")
    return float(raw)


def _int(raw: Any, where: str, *, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {raw!r}")
    return raw


def _str(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw.strip()


def _endpoint(raw: Any, where: str, provider_names: set[str]) -> Endpoint:
    raw = _mapping(raw, where)
    _no_unknown(raw, _ENDPOINT_KEYS, where)
    provider = _str(raw.get("provider"), f"{where}.provider")
    if provider not in provider_names:
        known = ", ".join(sorted(provider_names)) or "none"
        raise ConfigError(f"{where}.provider: no provider named {provider!r} (configured: {known})")
    model = _str(raw.get("model"), f"{where}.model")
    price = _mapping(raw.get("price") or {}, f"{where}.price")
    _no_unknown(price, _PRICE_KEYS, f"{where}.price")
    context = raw.get("context_length")
    quantization = raw.get("quantization")
    collection = raw.get("data_collection", "allow")
    if collection not in ("allow", "deny"):
        raise ConfigError(f"{where}.data_collection: 'allow' or 'deny', got {collection!r}")
    zdr = raw.get("zdr", False)
    if not isinstance(zdr, bool):
        raise ConfigError(f"{where}.zdr: expected true or false, got {zdr!r}")
    tier = raw.get("tier", "default")
    if tier not in SERVICE_TIERS:
        raise ConfigError(f"{where}.tier: one of {', '.join(SERVICE_TIERS)}, got {tier!r}")
    params = raw.get("supported_parameters")
    if params is not None and (not isinstance(params, list) or not all(isinstance(p, str) for p in params)):
        raise ConfigError(f"{where}.supported_parameters: expected a list of parameter names")
    return Endpoint(
        provider=provider,
        model=model,
        price_prompt=_number(price.get("prompt", 0), f"{where}.price.prompt"),
        price_completion=_number(price.get("completion", 0), f"{where}.price.completion"),
        price_request=_number(price.get("request", 0), f"{where}.price.request"),
        context_length=None if context is None else _int(context, f"{where}.context_length", minimum=1),
        # Quantizations compare case-insensitively, as OpenRouter's enum values are lower case.
        quantization=None if quantization is None else _str(quantization, f"{where}.quantization").lower(),
        data_collection=collection,
        zdr=zdr,
        tier=tier,
        supported_parameters=None if params is None else frozenset(params),
    )


def _model(raw: Any, where: str, provider_names: set[str]) -> RoutedModel:
    raw = _mapping(raw, where)
    _no_unknown(raw, _MODEL_KEYS, where)
    name = _str(raw.get("name"), f"{where}.name")
    endpoints = raw.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError(f"{where}.endpoints: a non-empty list of endpoints is required for model {name!r}")
    parsed = tuple(_endpoint(e, f"{where}.endpoints[{i}]", provider_names) for i, e in enumerate(endpoints))
    slugs = [e.slug for e in parsed]
    if len(set(slugs)) != len(slugs):
        # Stats and cooldowns are kept per provider/model; two identical endpoints would share them silently.
        raise ConfigError(f"{where}.endpoints: each provider/model pair may appear once for model {name!r}")
    return RoutedModel(name=name, endpoints=parsed)


def parse_routing(raw: Any, provider_names: set[str]) -> RoutingConfig:
    """The `routing` section (None or missing: no routed models, defaults for the rest)."""
    if raw is None:
        return RoutingConfig()
    raw = _mapping(raw, "routing")
    _no_unknown(raw, _TOP_KEYS, "routing")
    models_raw = raw.get("models") or []
    if not isinstance(models_raw, list):
        raise ConfigError("routing.models: expected a list")
    models = tuple(_model(m, f"routing.models[{i}]", provider_names) for i, m in enumerate(models_raw))
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"routing.models: names must be unique, repeated: {duplicates}")
    defaults = RoutingConfig()
    return RoutingConfig(
        models=models,
        cooldown_seconds=_number(raw.get("cooldown_seconds", defaults.cooldown_seconds), "routing.cooldown_seconds"),
        max_retries=_int(raw.get("max_retries", defaults.max_retries), "routing.max_retries", minimum=0),
        retry_backoff=_number(raw.get("retry_backoff", defaults.retry_backoff), "routing.retry_backoff"),
    )
