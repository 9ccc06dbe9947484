"""All settings, from one YAML file plus environment variables for secrets. Nothing else reads os.environ."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from switchboard.shared.config.errors import ConfigError
from switchboard.shared.config.limits import RateLimitConfig, parse_rate_limits
from switchboard.shared.config.routing import RoutingConfig, parse_routing
from switchboard.shared.config.schema import validate_file
from switchboard.shared.crypto import parse_key

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_ENVOY_TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
# The embedded models that ship as packages (service/local/models.py knows where their files come from).
SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
PACKAGED_MODELS = (SMOLLM2, GEMMA)
PROVIDER_KINDS = ("openai-chat", "openai-responses", "anthropic", "llama-cpp")
# Spellings of the stream event names where OpenAI (and OpenRouter) and Open Responses differ.
EVENT_NAMES = ("openai", "open_responses")


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


def _background(raw: Any) -> BackgroundConfig:
    raw = raw or {}
    unknown = set(raw) - set(BackgroundConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"background: unknown keys {sorted(unknown)}")
    try:
        parsed = BackgroundConfig(**{k: type(getattr(BackgroundConfig, k))(v) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"background: {exc}") from None
    if parsed.lease_seconds <= 0 or parsed.poll_seconds <= 0 or parsed.concurrency < 1 or parsed.max_attempts < 1:
        raise ConfigError("background: values must be positive")
    return parsed


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


def _mcp(raw: Any) -> McpConfig:
    raw = dict(raw or {})
    unknown = set(raw) - set(McpConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"mcp: unknown keys {sorted(unknown)}")
    servers = raw.pop("allowed_servers", None) or []
    if not isinstance(servers, list) or not all(isinstance(s, str) and "://" in s for s in servers):
        raise ConfigError("mcp.allowed_servers: a list of URL prefixes such as 'https://mcp.example.com/'")
    try:
        timeouts = {k: float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"mcp: {exc}") from None
    if any(v <= 0 for v in timeouts.values()):
        raise ConfigError("mcp: timeouts must be positive")
    return McpConfig(allowed_servers=tuple(servers), **timeouts)


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


def _provider(raw: Any, index: int, env: dict[str, str]) -> ProviderConfig:
    where = f"providers[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    raw = dict(raw)
    name, kind = raw.pop("name", None), raw.pop("kind", None)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where}.name: a non-empty name without '/' is required")
    if kind not in PROVIDER_KINDS:
        raise ConfigError(f"{where}.kind: one of {', '.join(PROVIDER_KINDS)} is required, got {kind!r}")
    api_key = raw.pop("api_key", None)
    key_env = raw.pop("api_key_env", None)
    if key_env:
        api_key = env.get(str(key_env)) or api_key
    base_url = raw.pop("base_url", None)
    if kind in ("openai-chat", "openai-responses") and not base_url:
        raise ConfigError(f"{where}.base_url: required for kind {kind}")
    headers = raw.pop("headers", None) or {}
    if kind == "llama-cpp":
        # The embedded provider's `models` maps model ids to GGUF files: an option of the provider itself.
        local = raw.get("models")
        models: list[str] = list(local) if isinstance(local, dict) else list(PACKAGED_MODELS)
    else:
        models = raw.pop("models", None) or []
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{where}.models: expected a list of upstream model ids")
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=str(base_url).rstrip("/") if base_url else None,
        api_key=api_key,
        headers={str(k): str(v) for k, v in headers.items()},
        options=raw,
        api_key_env=str(key_env) if key_env else None,
        models=tuple(models),
    )


def from_dict(data: dict[str, Any], env: dict[str, str] | None = None, base_dir: Path | None = None) -> Config:
    validate_file(data)
    env = dict(os.environ) if env is None else env
    server_raw = dict(data.get("server") or {})
    unknown = set(server_raw) - set(ServerConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"server: unknown keys {sorted(unknown)}")
    if "envoy_config" in server_raw:
        path = Path(server_raw["envoy_config"])
        server_raw["envoy_config"] = path if path.is_absolute() else (base_dir or Path.cwd()) / path
    if server_raw.get("workers") == "auto":
        server_raw["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = server_raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"server.workers: a number of processes >= 1 or \"auto\", got {workers!r}")
    server = ServerConfig(**server_raw)
    if not isinstance(server.restart_limit, int) or server.restart_limit < 0 or server.restart_window <= 0:
        raise ConfigError("server.restart_limit: a count >= 0; server.restart_window: seconds > 0")
    if server.event_names not in EVENT_NAMES:
        raise ConfigError(f"server.event_names: expected one of {', '.join(EVENT_NAMES)}, got {server.event_names!r}")
    for key in ("grpc", "http", "envoy", "envoy_grpc", "envoy_admin", "metrics", "envoy_otlp"):
        value = getattr(server, key)
        if value is not None:
            parse_address(value, f"server.{key}")

    auth = data.get("auth") or {}
    keys = tuple(str(k) for k in auth.get("api_keys") or ())
    if auth.get("api_keys_env"):
        keys += _env_list(env, str(auth["api_keys_env"]))
    keys += _env_list(env, "SWITCHBOARD_API_KEYS")
    keys = tuple(dict.fromkeys(keys))  # the same key from two sources counts once

    providers = tuple(_provider(p, i, env) for i, p in enumerate(data.get("providers") or ()))
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ConfigError("providers: names must be unique")
    default_model = data.get("default_model")
    routed = {m.get("name") for m in ((data.get("routing") or {}).get("models") or []) if isinstance(m, dict)}
    if default_model is not None and default_model not in routed and str(default_model).split("/", 1)[0] not in names:
        raise ConfigError(f"default_model: {default_model!r} is neither a routed model nor '<provider>/<model>' "
                          "with a configured provider")
    tools = data.get("unsupported_tools", "omit")
    if tools not in ("omit", "reject"):
        raise ConfigError("unsupported_tools: 'omit' or 'reject'")
    try:
        sealing_key = parse_key(env.get(str(data.get("encryption_key_env") or "SWITCHBOARD_ENCRYPTION_KEY"))
                        or data.get("encryption_key"))
    except ValueError as exc:
        raise ConfigError(f"encryption_key: {exc}") from None
    if sealing_key is not None and len(sealing_key) != 32:
        raise ConfigError("encryption_key: must be 32 bytes, base64-encoded")

    store = str(data.get("store", Config.store))
    if data.get("store_env"):
        store = env.get(str(data["store_env"])) or store
    prices: dict[str, tuple[float, float]] = {}
    for name, price in (data.get("pricing") or {}).items():
        if not isinstance(price, dict) or not all(isinstance(price.get(k, 0), int | float) for k in price):
            raise ConfigError(f"pricing.{name}: expected {{prompt: USD per 1M tokens, completion: ...}}")
        prices[str(name)] = (float(price.get("prompt", 0)), float(price.get("completion", 0)))
    otel = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    rate_limits = _rate_limits(data.get("rate_limits"), env)
    if server.workers > 1 and rate_limits.enabled and not rate_limits.redis_url:
        raise ConfigError("rate_limits: with server.workers > 1 the service processes must share their counts; "
                          "set rate_limits.redis_url (or redis_url_env)")
    return Config(
        server=server,
        api_keys=keys,
        store=store,
        providers=providers,
        default_model=str(default_model) if default_model else None,
        unsupported_tools=tools,
        record_content=bool(data.get("record_content", False)),
        otel_enabled=otel and env.get("OTEL_SDK_DISABLED", "").lower() != "true",
        otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        encryption_key=sealing_key,
        prices=prices,
        store_default=bool(data.get("store_default", True)),
        routing=parse_routing(data.get("routing"), set(names)),
        background=_background(data.get("background")),
        rate_limits=rate_limits,
        retention_seconds=float(data.get("retention_seconds", Config.retention_seconds)),
        store_commit_window=_commit_window(data.get("store_commit_window", Config.store_commit_window)),
        mcp=_mcp(data.get("mcp")),
    )


def _commit_window(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError("store_commit_window: expected seconds between 0 and 1, or null")
    return float(value)


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
