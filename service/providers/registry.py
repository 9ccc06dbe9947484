"""Builds the configured providers."""

from __future__ import annotations

from switchboard.service.providers.base import Provider
from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.settings import Config, ProviderConfig


def build(spec: ProviderConfig) -> Provider:
    if spec.kind == "openai-chat":
        from switchboard.service.providers.openai_chat import OpenAIChatProvider

        assert spec.base_url is not None
        return OpenAIChatProvider(spec.name, base_url=spec.base_url, api_key=spec.api_key, headers=spec.headers,
                                  **spec.options)
    if spec.kind == "openai-responses":
        from switchboard.service.providers.openai_responses import OpenAIResponsesProvider

        assert spec.base_url is not None
        return OpenAIResponsesProvider(spec.name, base_url=spec.base_url, api_key=spec.api_key,
                                       headers=spec.headers, **spec.options)
    if spec.kind == "anthropic":
        from switchboard.service.providers.anthropic import AnthropicProvider

        if spec.base_url:
            return AnthropicProvider(spec.name, base_url=spec.base_url, api_key=spec.api_key,
                                     headers=spec.headers, **spec.options)
        return AnthropicProvider(spec.name, api_key=spec.api_key, headers=spec.headers, **spec.options)
    if spec.kind == "llama-cpp":
        from switchboard.service.providers.llama_cpp import LlamaCppProvider

        return LlamaCppProvider(spec.name, **spec.options)
    raise ConfigError(f"unknown provider kind {spec.kind!r}")


def build_all(config: Config) -> dict[str, Provider]:
    try:
        return {spec.name: build(spec) for spec in config.providers}
    except TypeError as exc:
        raise ConfigError(f"providers: {exc}") from None
