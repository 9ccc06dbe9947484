"""The start-up summary of `switchboard serve`: listeners, providers and their models, store, auth mode."""

from __future__ import annotations

from urllib.parse import urlsplit

from switchboard.shared.config.settings import Config, parse_address


def _url(address: str, what: str, scheme: str = "http") -> str:
    host, port = parse_address(address, what)
    return f"{scheme}://{host}:{port}" if scheme else f"{host}:{port}"


def store_label(url: str) -> str:
    """The store URL without its credentials."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return f"SQLite {url[len('sqlite:///'):]}"
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {host}{port}{parts.path}"


def startup_summary(config: Config) -> str:
    """Several lines, each starting with two spaces, for the log after start-up."""
    from switchboard.service.api.models import Catalog

    server = config.server
    public = _url(server.envoy, "server.envoy") if server.envoy else _url(server.http, "server.http")
    lines = ["listeners:",
             f"  gRPC service  {_url(server.grpc, 'server.grpc', '')}",
             f"  HTTP edge     {_url(server.http, 'server.http')}"]
    if server.envoy:
        lines.append(f"  Envoy         {public}" + (f" (gRPC {_url(server.envoy_grpc, 'server.envoy_grpc', '')})"
                                                    if server.envoy_grpc else ""))
    if server.playground:
        lines.append(f"  playground    {public}/playground/")
    catalog = Catalog(config)
    lines.append("providers:")
    for provider in config.providers:
        models = [m for m in catalog.models if m.startswith(f"{provider.name}/")]
        lines.append(f"  {provider.name} ({provider.kind}): {', '.join(models) or 'any <provider>/<model>'}")
    routed = [m.name for m in config.routing.models]
    if routed:
        lines.append(f"routed models: {', '.join(routed)}")
    if config.default_model:
        lines.append(f"default model: {config.default_model}")
    lines.append(f"store: {store_label(config.store)}")
    keys = len(config.api_keys)
    lines.append(f"auth: {keys} API key{'s' if keys != 1 else ''} (Bearer)" if keys
                 else "auth: OPEN, no API keys configured (set auth.api_keys or SWITCHBOARD_API_KEYS)")
    if config.rate_limits.redis_url:
        lines.append(f"rate limits: Redis {urlsplit(config.rate_limits.redis_url).hostname}")
    return "\n".join(lines)
