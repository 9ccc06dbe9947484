"""The shape of the config file as pydantic models: every key, its type, its bounds and its documented default.

`validate_file` checks a loaded YAML mapping against it and turns the first problems into one `ConfigError` naming
the key paths (`server.workers: ...`); `json_schema` is what `switchboard config-schema` prints for editors. The
typed values the rest of the code reads (`Config` and its sections) are built from the checked mapping by
`settings`, `routing` and `limits`, which add what a schema cannot say (environment variables, names that must
exist or be unique).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from switchboard.shared.config.errors import ConfigError

# The provider kinds (service/providers/registry.py builds one per kind) and the stream event name spellings.
ProviderKind = Literal["openai-chat", "openai-responses", "anthropic", "llama-cpp"]
EventNames = Literal["openai", "open_responses"]
_TIERS = Literal["default", "flex", "priority", "scale"]
# Keys whose values may be secrets: an error about them never repeats the value.
_SECRET_PARTS = {"auth", "api_key", "encryption_key", "per_key", "redis_url", "store", "headers"}


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _workers(value: Any) -> Any:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"a number of processes >= 1 or \"auto\", got {value!r}")
    return value


def _provider_name(value: str) -> str:
    if not value or "/" in value:
        raise ValueError("a non-empty name without '/' is required")
    return value


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return value


def _url_prefix(value: str) -> str:
    if "://" not in value:
        raise ValueError(f"a URL prefix such as 'https://mcp.example.com/', got {value!r}")
    return value


Address = Annotated[str, AfterValidator(_address)]
UrlPrefix = Annotated[str, AfterValidator(_url_prefix), Field(json_schema_extra={"pattern": "://"})]
Seconds = Annotated[float, Field(gt=0)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Limit = Annotated[int, Field(ge=1)] | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ServerFile(_Section):
    grpc: Address = "127.0.0.1:50051"
    http: Address = "127.0.0.1:8080"
    envoy: Address | None = None
    envoy_grpc: Address | None = None
    envoy_admin: Address = "127.0.0.1:9901"
    envoy_config: str = Field(default="deploy/envoy/envoy.yaml",
                              description="Envoy template; relative to the config file")
    grace: float = Field(default=30.0, ge=0, description="seconds in-flight calls get to finish on shutdown")
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    grpc_target: str | None = Field(default=None, description="where the edge reaches the service")
    grpc_unix: str | None = Field(default=None, description="a Unix socket path the service listens on as well")
    request_timeout: float = Field(default=600.0, gt=0,
                                   description="deadline of a unary call made by the edge, seconds")
    metrics: Address | None = Field(default=None, description="Prometheus scrape endpoint of the service")
    envoy_otlp: Address | None = Field(default=None, description="where Envoy sends its spans (OTLP/gRPC)")
    restart_limit: int = Field(default=5, ge=0)
    restart_window: float = Field(default=60.0, gt=0)
    workers: Annotated[Annotated[int, Field(ge=1)] | Literal["auto"], BeforeValidator(_workers)] = 1
    event_names: EventNames = "openai"
    playground: bool = True
    edge: Literal["in-process", "separate"] = Field(
        default="in-process", description="how serve runs the edge: inside each service process (no gRPC hop) "
                                          "or as processes of its own calling the service over gRPC")


class AuthFile(_Section):
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str | None = Field(default=None, description="environment variable with comma-separated API keys")


class ProviderFile(BaseModel):
    # Other keys are options of the provider kind (checked by the provider).
    model_config = ConfigDict(extra="allow", strict=True)

    name: Annotated[str, AfterValidator(_provider_name)]
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] | None = None
    models: list[Annotated[str, Field(min_length=1)]] | dict[str, Any] | None = Field(
        default=None, description="upstream model ids (llama-cpp: a mapping of model id to GGUF file)")


class PricingFile(_Section):
    prompt: float = 0.0
    completion: float = 0.0


class EndpointPriceFile(_Section):
    prompt: Price = 0.0
    completion: Price = 0.0
    request: Price = 0.0


class EndpointFile(_Section):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    provider: Annotated[str, Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    price: EndpointPriceFile | None = None
    context_length: Annotated[int, Field(ge=1)] | None = None
    quantization: Annotated[str, Field(min_length=1)] | None = None
    data_collection: Literal["allow", "deny"] = "allow"
    zdr: bool = False
    tier: _TIERS = "default"
    supported_parameters: list[str] | None = None


class RoutedModelFile(_Section):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

    name: Annotated[str, Field(min_length=1)]
    endpoints: Annotated[list[EndpointFile], Field(min_length=1)]


class RoutingFile(_Section):
    cooldown_seconds: Price = 30.0
    max_retries: int = Field(default=2, ge=0)
    retry_backoff: Price = 0.2
    models: list[RoutedModelFile] | None = None


class KeyLimitsFile(_Section):
    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None


class RateLimitsFile(_Section):
    requests_per_minute: Limit = None
    tokens_per_minute: Limit = None
    redis_url: Annotated[str, AfterValidator(_redis_url),
                         Field(json_schema_extra={"pattern": "^(redis|rediss|unix)://"})] | None = None
    redis_url_env: str | None = None
    per_key: dict[str, KeyLimitsFile] | None = None


class BackgroundFile(_Section):
    lease_seconds: Seconds = 15.0
    poll_seconds: Seconds = 0.1
    concurrency: int = Field(default=4, ge=1)
    max_attempts: int = Field(default=3, ge=1)


class McpFile(_Section):
    allowed_servers: list[UrlPrefix] | None = None
    connect_timeout: Seconds = 5.0
    list_timeout: Seconds = 15.0
    call_timeout: Seconds = 60.0
    response_timeout: Seconds = 300.0


class ConfigFile(_Section):
    """The Switchboard configuration file (YAML)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="Switchboard configuration")

    server: ServerFile | None = None
    auth: AuthFile | None = None
    store: str = Field(default="sqlite:///./switchboard.db", description="sqlite:///PATH or postgresql://...")
    store_env: str | None = None
    providers: list[ProviderFile] | None = None
    default_model: str | None = None
    unsupported_tools: Literal["omit", "reject"] = "omit"
    record_content: bool = False
    encryption_key: str | None = None
    encryption_key_env: str | None = None
    pricing: dict[str, PricingFile] | None = None
    routing: RoutingFile | None = None
    rate_limits: RateLimitsFile | None = None
    background: BackgroundFile | None = None
    store_default: bool = True
    retention_seconds: float = Field(default=30 * 24 * 3600, ge=0)
    store_commit_window: Annotated[float, Field(ge=0, le=1)] | None = 0.002
    mcp: McpFile | None = None


Section = TypeVar("Section", bound=BaseModel)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif i > 0 and loc[i - 1] == "per_key":
            text += f"[{part[:6]}...]"  # never print a whole API key
        else:
            text += f".{part}" if text else part
    return text


def validate_file(data: dict[str, Any]) -> ConfigFile:
    """Check a loaded config mapping; a `ConfigError` names each wrong key path and what is wrong with it."""
    return validate_section(ConfigFile, data)


def validate_section(model: type[Section], raw: Any, *where: str) -> Section:
    """Check one section (`where`: its key path, e.g. "routing") against its model."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None


def _describe(exc: ValidationError, where: tuple[str, ...]) -> str:
    unknown: dict[str, list[str]] = {}
    problems: list[str] = []
    for error in exc.errors():
        loc = (*where, *error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.setdefault(_path(loc[:-1]) or "config", []).append(str(loc[-1]))
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        if error["type"] in ("model_type", "dict_type", "model_attributes_type"):
            message = "expected a mapping"  # not "an instance of RoutingFile"
        if error["type"] not in ("value_error", "missing") and not _SECRET_PARTS & {str(p) for p in loc}:
            message += f", got {error['input']!r}"
        problems.append(f"{_path(loc) or 'config'}: {message}")
    problems[:0] = [f"{where}: unknown keys {sorted(keys)}" for where, keys in unknown.items()]
    return "; ".join(dict.fromkeys(problems))


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the config file."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **ConfigFile.model_json_schema()}
