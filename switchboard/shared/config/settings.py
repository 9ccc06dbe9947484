"""All settings, from one YAML file plus environment variables for secrets. Nothing else reads os.environ."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.limits import RateLimitConfig, parse_rate_limits
from switchboard.shared.config.routing import RoutingConfig, parse_routing
from switchboard.shared.config.schema import (
    AuthFile,
    EventNames,
    McpFile,
    ProviderFile,
    ProviderKind,
    ServerFile,
    validate_file,
)
from switchboard.shared.crypto import parse_key

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_ENVOY_TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
# The embedded models that ship as packages (service/local/models.py knows where their files come from).
SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
PACKAGED_MODELS = (SMOLLM2, GEMMA)
PROVIDER_KINDS: tuple[str, ...] = get_args(ProviderKind)
# Spellings of the stream event names where OpenAI (and OpenRouter) and Open Responses differ.
EVENT_NAMES: tuple[str, ...] = get_args(EventNames)


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class ServerConfig:
    grpc: str = "127.0.0.1:50051"
    http: str = "127.0.0.1:8080"
    envoy: str | None = None
    envoy_grpc: str | None = None
    envoy_admin: str = "127.0.0.1:9901"
    envoy_config: Path = DEFAULT_ENVOY_TEMPLATE
    # Seconds that in-flight calls get to finish on shutdown.
    grace: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Where the edge reaches the service; defaults to `grpc_unix` when set, else to the `grpc` address.
    grpc_target: str | None = None
    # A Unix domain socket path the service listens on as well (for an edge on the same host); unset = none.
    grpc_unix: str | None = None
    # Deadline of a unary call made by the edge, in seconds.
    request_timeout: float = 600.0
    # Prometheus scrape endpoint of the service (OpenTelemetry metrics); unset = off.
    metrics: str | None = None
    # Where Envoy sends its spans (OTLP/gRPC HOST:PORT); defaults to the OTEL_EXPORTER_OTLP_* endpoint.
    envoy_otlp: str | None = None
    # `switchboard serve` restarts a child that dies, at most `restart_limit` times within `restart_window` seconds.
    restart_limit: int = 5
    restart_window: float = 60.0
    # Service and edge processes `serve` runs, sharing their ports (SO_REUSEPORT); "auto" = one per CPU core.
    workers: int = 1
    # How `serve` runs the edge: `in-process` (inside each service process, calling the servicer directly, with
    # no gRPC hop) or `separate` (its own processes, calling the service over gRPC). Decision 15.
    edge: str = "in-process"
    # Stream event names where the specs differ: `openai` (OpenAI and OpenRouter) or `open_responses`.
    event_names: str = "openai"
    # The edge serves the browser playground at /playground (its API calls need a key like any other).
    playground: bool = True


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # The environment variable the key came from (for `switchboard doctor`; the key itself is `api_key`).
    api_key_env: str | None = None
    # Upstream model ids this provider serves, listed by /v1/models as `<name>/<model>`.
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackgroundConfig:
    lease_seconds: float = 15.0
    poll_seconds: float = 0.1
    concurrency: int = 4
    max_attempts: int = 3


@dataclass(frozen=True)
class McpConfig:
    """Remote MCP servers: reached only when their URL starts with one of ``allowed_servers`` (none by default)."""

    allowed_servers: tuple[str, ...] = ()
    # Seconds: to connect, to list a server's tools, for each call, and for all MCP work of one response.
    connect_timeout: float = 5.0
    list_timeout: float = 15.0
    call_timeout: float = 60.0
    response_timeout: float = 300.0

    def allows(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.allowed_servers)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    api_keys: tuple[str, ...] = ()
    store: str = "sqlite:///./switchboard.db"
    providers: tuple[ProviderConfig, ...] = ()
    default_model: str | None = None
    # What to do with tool types Switchboard cannot run (hosted tools, unknown types).
    unsupported_tools: Literal["omit", "reject"] = "omit"
    # Whether gen_ai spans may record prompt and completion text.
    record_content: bool = False
    otel_enabled: bool = False
    # The OTLP traces endpoint from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT (Envoy exports there too).
    otlp_endpoint: str | None = None
    # 32-byte key for encrypted reasoning and compactions; a random per-process key when unset.
    encryption_key: bytes | None = None
    # USD per million tokens by model name: {"prompt": .., "completion": ..}.
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    routing: RoutingConfig = field(default_factory=lambda: _routing_default())
    rate_limits: RateLimitConfig = field(default_factory=lambda: _rate_default())
    # Background workers: job lease, polling interval, jobs at once, claims before a job fails.
    background: BackgroundConfig = field(default_factory=lambda: BackgroundConfig())
    # `store` when a request does not say (OpenAI's default is true).
    store_default: bool = True
    # Stored responses are deleted this many seconds after they are saved; 0 keeps them.
    retention_seconds: float = 30 * 24 * 3600
    # Finished foreground responses are saved by one writer, many per transaction, after gathering for this many
    # seconds (docs/decisions/0007-group-commit.md); null saves each one before its reply.
    store_commit_window: float | None = 0.002
    mcp: McpConfig = field(default_factory=McpConfig)

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)


def _env_list(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in env.get(name, "").split(",") if k.strip())


def _provider(raw: ProviderFile, index: int, env: dict[str, str]) -> ProviderConfig:
    where = f"providers[{index}]"
    api_key = raw.api_key
    if raw.api_key_env:
        api_key = env.get(raw.api_key_env) or api_key
    if raw.kind in ("openai-chat", "openai-responses") and not raw.base_url:
        raise ConfigError(f"{where}.base_url: required for kind {raw.kind}")
    options = dict(raw.model_extra or {})
    if raw.kind == "llama-cpp":
        # The embedded provider's `models` maps model ids to GGUF files: an option of the provider itself.
        if "models" in raw.model_fields_set:
            options["models"] = raw.models
        models: list[str] = list(raw.models) if isinstance(raw.models, dict) else list(PACKAGED_MODELS)
    elif isinstance(raw.models, dict):
        raise ConfigError(f"{where}.models: expected a list of upstream model ids")
    else:
        models = list(raw.models or ())
    return ProviderConfig(
        name=raw.name,
        kind=raw.kind,
        base_url=raw.base_url.rstrip("/") if raw.base_url else None,
        api_key=api_key,
        headers=dict(raw.headers or {}),
        options=options,
        api_key_env=raw.api_key_env or None,
        models=tuple(models),
    )


def _server(raw: ServerFile | None, base_dir: Path | None) -> ServerConfig:
    if raw is None:
        return ServerConfig()
    values = raw.model_dump(exclude={"envoy_config"})
    if "envoy_config" in raw.model_fields_set:
        path = Path(raw.envoy_config)
        values["envoy_config"] = path if path.is_absolute() else (base_dir or Path.cwd()) / path
    if raw.workers == "auto":
        values["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ServerConfig(**values)


def from_dict(data: dict[str, Any], env: dict[str, str] | None = None, base_dir: Path | None = None) -> Config:
    """The checked configuration: the file's shape by `schema.validate_file`, then what the shape cannot say
    (secrets from the environment, names that must exist or be unique)."""
    file = validate_file(data)
    env = dict(os.environ) if env is None else env
    server = _server(file.server, base_dir)

    auth = file.auth or AuthFile()
    keys = tuple(auth.api_keys)
    if auth.api_keys_env:
        keys += _env_list(env, auth.api_keys_env)
    keys += _env_list(env, "SWITCHBOARD_API_KEYS")
    keys = tuple(dict.fromkeys(keys))  # the same key from two sources counts once

    providers = tuple(_provider(p, i, env) for i, p in enumerate(file.providers or ()))
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ConfigError("providers: names must be unique")
    default_model = file.default_model
    routed = {m.name for m in ((file.routing.models or []) if file.routing else [])}
    if default_model is not None and default_model not in routed and default_model.split("/", 1)[0] not in names:
        raise ConfigError(f"default_model: {default_model!r} is neither a routed model nor '<provider>/<model>' "
                          "with a configured provider")
    try:
        sealing_key = parse_key(env.get(file.encryption_key_env or "SWITCHBOARD_ENCRYPTION_KEY")
                                or file.encryption_key)
    except ValueError as exc:
        raise ConfigError(f"encryption_key: {exc}") from None
    if sealing_key is not None and len(sealing_key) != 32:
        raise ConfigError("encryption_key: must be 32 bytes, base64-encoded")

    store = file.store
    if file.store_env:
        store = env.get(file.store_env) or store
    prices = {name: (price.prompt, price.completion) for name, price in (file.pricing or {}).items()}
    otel = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    rate_limits = _rate_limits(data.get("rate_limits"), env)
    if server.workers > 1 and rate_limits.enabled and not rate_limits.redis_url:
        raise ConfigError("rate_limits: with server.workers > 1 the service processes must share their counts; "
                          "set rate_limits.redis_url (or redis_url_env)")
    mcp = file.mcp or McpFile()
    return Config(
        server=server,
        api_keys=keys,
        store=store,
        providers=providers,
        default_model=default_model or None,
        unsupported_tools=file.unsupported_tools,
        record_content=file.record_content,
        otel_enabled=otel and env.get("OTEL_SDK_DISABLED", "").lower() != "true",
        otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        encryption_key=sealing_key,
        prices=prices,
        store_default=file.store_default,
        routing=parse_routing(data.get("routing"), set(names)),
        background=BackgroundConfig(**file.background.model_dump()) if file.background else BackgroundConfig(),
        rate_limits=rate_limits,
        retention_seconds=file.retention_seconds,
        store_commit_window=file.store_commit_window,
        mcp=McpConfig(allowed_servers=tuple(mcp.allowed_servers or ()),
                      **mcp.model_dump(exclude={"allowed_servers"})),
    )


def _routing_default() -> RoutingConfig:
    return RoutingConfig()


def _rate_default() -> RateLimitConfig:
    return RateLimitConfig()


def _rate_limits(raw: Any, env: dict[str, str]) -> RateLimitConfig:
    if isinstance(raw, dict) and raw.get("redis_url_env"):
        raw = {k: v for k, v in raw.items() if k != "redis_url_env"} | {"redis_url": env.get(str(raw["redis_url_env"]))}
    return parse_rate_limits(raw)


def load(path: str | Path, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(data, env, base_dir=path.parent)


WORKER_ENV = "SWITCHBOARD_WORKER"


def grpc_unix_path(server: ServerConfig) -> str | None:
    """The Unix socket of this service process and of its paired edge. With `server.workers` > 1, serve numbers its
    service and edge processes (SWITCHBOARD_WORKER) and pair N uses `<grpc_unix>.N`: one path cannot be shared,
    as a new listener replaces the old one's file."""
    if not server.grpc_unix:
        return None
    index = os.environ.get(WORKER_ENV)
    return f"{server.grpc_unix}.{index}" if index else server.grpc_unix
